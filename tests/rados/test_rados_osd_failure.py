"""An OSD killed (kill -9) and restarted under client I/O, on the 3-OSD cluster (pool size 3,
min_size 2): the client sees no error, only a stall, and reads back every byte afterwards.

Binding level (plugins/rados): a thread writes 4K objects and reads each one back at once,
while the test kills OSD 1, waits for the mons to mark it down, starts it again and waits
for recovery to end. The longest stall is recorded (``record_property``), not asserted.
"""

from __future__ import annotations

import os
import threading
import time

from plugins.rados import Cluster

OBJECTS = 64


class Writer(threading.Thread):
    """Writes 4 KiB of fresh random bytes to one of OBJECTS objects, reads them back and
    compares, over and over; keeps what each object must hold, the op count and the
    longest gap between two completed write+read pairs."""

    def __init__(self, io):
        super().__init__(daemon=True)
        self.io = io
        self.expect: dict[str, bytes] = {}
        self.done = 0
        self.longest = 0.0
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        try:
            while not self.halt.is_set():
                oid, data = f"obj.{self.done % OBJECTS}", os.urandom(4096)
                self.io.write(oid, data, 0)
                self.expect[oid] = data
                got = self.io.read(oid, 4096, 0)
                if got != data:
                    raise AssertionError(f"{oid}: read back other bytes than written")
                now = time.monotonic()
                self.longest = max(self.longest, now - last)
                last = now
                self.done += 1
        except BaseException as e:      # reported by the test, not lost in the thread
            self.error = e

    def wait_for(self, ops: int, deadline: float = 60) -> None:
        """Until ``ops`` more write+read pairs have completed (I/O flows)."""
        target, end = self.done + ops, time.monotonic() + deadline
        while self.done < target:
            assert self.error is None, f"client error: {self.error!r}"
            assert self.is_alive(), "writer stopped"
            assert time.monotonic() < end, f"no progress: {self.done}/{target} ops"
            time.sleep(0.02)


def test_osd_killed_and_restarted_under_io_is_only_a_stall(rados3, rados_ns, record_property):
    # the op timeout is the error a client would see: a PG below min_size fails with
    # ETIMEDOUT after it (the script's [client] also has 30 s)
    with Cluster(rados3.conf, timeout=30) as c, c.open_ioctx(rados3.pool, rados_ns) as io:
        w = Writer(io)
        w.start()
        try:
            w.wait_for(200)
            rados3.kill_osd(1)
            down_after = rados3.wait_osds_up(2)
            # degraded (2 of 3 replicas): writes still complete, they do not just queue
            w.wait_for(200)
            rados3.start_osd(1)
            recovered_after = rados3.wait_healthy()
            w.wait_for(200)     # and on the healthy cluster again
        finally:
            w.halt.set()
            w.join(60)
        assert w.error is None, f"client error: {w.error!r}"
        assert not w.is_alive()
        # every object holds what was last written to it, read on the recovered cluster
        for oid, data in w.expect.items():
            assert io.read(oid, 4096, 0) == data, oid
    record_property("longest_stall_s", round(w.longest, 3))
    record_property("marked_down_after_s", round(down_after, 2))
    record_property("healthy_after_restart_s", round(recovered_after, 2))
    record_property("ops", w.done)
    print(f"\n{w.done} write+read pairs; longest stall {w.longest:.2f} s; OSD 1 marked down "
          f"{down_after:.2f} s after the kill; HEALTH_OK {recovered_after:.2f} s after its "
          f"restart; cluster up in {rados3.up_seconds:.1f} s; RSS MiB {rados3.rss_mib()}")
