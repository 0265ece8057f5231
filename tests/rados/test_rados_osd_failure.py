"""An OSD killed (kill -9) and restarted under client I/O, on the 3-OSD cluster (pool size 3,
min_size 2): the client sees no error, only a stall, and reads back every byte afterwards.

At binding level (plugins/rados: a thread writes 4K objects and reads each one back at
once) and through vsand (a RADOS LUN, an NBD client writing and reading back 4K blocks).
Each test kills OSD 1, waits for the mons to mark it down, starts it again and waits for
recovery to end, with I/O completing in every phase. The longest stall is recorded
(``record_property``), not asserted.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from daemonkit import SYS_PY, need
from plugins.rados import Cluster
from test_rados_lun import start

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


# Writes 4 KiB of fresh random bytes to one of BLOCKS blocks, reads them back and compares,
# until the stop file appears; prints the op count every 50 ops. Then FLUSHes, checks every
# block once more and saves what the LUN must hold. Stops at the first error and says so.
NBD_WRITER = r"""
import os, sys, time, nbd
uri, stop, image = sys.argv[1:4]
B, BLOCKS = 4096, 256
h = nbd.NBD()
h.connect_uri(uri)
expect = bytearray(B * BLOCKS)
n, longest, last = 0, 0.0, time.monotonic()
try:
    while not os.path.exists(stop):
        i, data = n % BLOCKS, os.urandom(B)
        h.pwrite(data, i * B)
        if h.pread(B, i * B) != data:
            print("error: block", i, "read back other bytes", flush=True)
            break
        expect[i * B:(i + 1) * B] = data
        n += 1
        now = time.monotonic()
        longest, last = max(longest, now - last), now
        if n % 50 == 0:
            print(n, flush=True)
    else:
        h.flush()
        bad = sum(h.pread(B, i * B) != expect[i * B:(i + 1) * B] for i in range(BLOCKS))
        with open(image, "wb") as f:
            f.write(expect)
        print("done", n, longest, bad, flush=True)
except nbd.Error as e:
    print("error:", e, flush=True)
"""


class NbdWriter:
    """NBD_WRITER in its own process (libnbd works with the system Python only)."""

    def __init__(self, tmp_path, uri: str):
        self.log, self.stop, self.image = (tmp_path / "writer.log", tmp_path / "writer.stop",
                                           tmp_path / "expect.img")
        self.out = open(self.log, "w")
        self.proc = subprocess.Popen([SYS_PY, "-c", NBD_WRITER, uri, str(self.stop), str(self.image)],
                                     stdout=self.out, stderr=subprocess.STDOUT)

    def lines(self) -> list[str]:
        return self.log.read_text().split()

    def count(self) -> int:
        nums = [int(x) for x in self.lines() if x.isdigit()]
        return nums[-1] if nums else 0

    def wait_for(self, ops: int, deadline: float = 60) -> None:
        target, end = self.count() + ops, time.monotonic() + deadline
        while self.count() < target:
            text = self.log.read_text()
            assert "error" not in text, f"client error: {text[-500:]}"
            assert self.proc.poll() is None, f"writer exited: {text[-500:]}"
            assert time.monotonic() < end, f"no progress: {self.count()}/{target} ops"
            time.sleep(0.05)

    def finish(self) -> tuple[int, float, int]:
        """Stops the writer: (ops, longest stall in s, blocks that read back wrong)."""
        self.stop.touch()
        self.proc.wait(60)
        self.out.close()
        text = self.log.read_text()
        assert "error" not in text and "done" in text, f"client: {text[-500:]}"
        ops, longest, bad = text.split("done", 1)[1].split()[:3]
        return int(ops), float(longest), int(bad)


def test_osd_killed_and_restarted_under_a_rados_lun(tmp_path, rados3, rados_ns, record_property):
    need("qemu-img")
    if subprocess.run([SYS_PY, "-c", "import nbd"], capture_output=True).returncode:
        pytest.skip("the libnbd Python binding (python3-libnbd) is missing")
    d = start(tmp_path, rados3, rados_ns)
    w = None
    try:
        d.ctl("lun.create", name="vol", size=16 << 20, raid=0)
        w = NbdWriter(tmp_path, d.uri("vol"))
        w.wait_for(100)
        rados3.kill_osd(1)
        rados3.wait_osds_up(2)
        w.wait_for(100)         # degraded: the LUN still serves
        rados3.start_osd(1)
        recovered_after = rados3.wait_healthy()
        w.wait_for(100)
        ops, longest, bad = w.finish()
        assert bad == 0
        # what the client last wrote is on RADOS: a restarted daemon serves the same bytes
        assert d.stop() == 0
        d.start()
        got = tmp_path / "got.img"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", d.uri("vol"), str(got)],
                       check=True, capture_output=True, timeout=60)
        assert got.read_bytes()[:256 * 4096] == w.image.read_bytes()
    finally:
        if w is not None and w.proc.poll() is None:
            w.proc.kill()
        d.stop()
    record_property("longest_stall_s", round(longest, 3))
    print(f"\n{ops} NBD write+read pairs; longest stall {longest:.2f} s; HEALTH_OK "
          f"{recovered_after:.2f} s after the restart")
