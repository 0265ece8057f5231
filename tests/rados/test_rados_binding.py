"""The ctypes librados binding (plugins/rados) against the run's real Ceph cluster.

All RADOS binding tests live in this one module: under ``pytest -n 2 --dist loadfile`` they
run on one worker, one after the other, and the cluster is shared (tests/radoskit.py).
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import radoskit
from plugins.rados import (Blocklisted, Busy, Cluster, ObjectNotFound, RadosError, TimedOut,
                           WriteOp, aio_read, aio_write)

PSEG = 2 << 20


@pytest.fixture
def io(rados_cluster, rados_ns):
    with Cluster(rados_cluster.conf, timeout=10) as c, c.open_ioctx(rados_cluster.pool, rados_ns) as io:
        yield io


def client(rados_cluster, rados_ns, timeout=10):
    c = Cluster(rados_cluster.conf, timeout=timeout)
    return c, c.open_ioctx(rados_cluster.pool, rados_ns)


def until(cond, what, deadline=20.0):
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_write_read_stat_remove(io):
    data = os.urandom(8192)
    io.write("pseg.0", data, 4096)
    assert io.read("pseg.0", 8192, 4096) == data
    assert io.stat("pseg.0")[0] == 4096 + 8192
    io.write_full("pseg.0", b"abc")
    assert io.stat("pseg.0")[0] == 3
    assert io.read("pseg.0", 3) == b"abc"
    io.remove("pseg.0")
    with pytest.raises(ObjectNotFound) as e:
        io.stat("pseg.0")
    assert e.value.errno == 2 and "stat pseg.0" in str(e.value)


def test_missing_object_and_tail_read_as_zeros(io):
    assert io.read("never-written", 4096, PSEG - 4096) == bytes(4096)
    io.write("short", b"\xff" * 100, 0)
    assert io.read("short", 200, 50) == b"\xff" * 50 + bytes(150)
    with pytest.raises(ObjectNotFound):
        io.remove("never-written")


def test_typed_errors(rados_cluster, io):
    with Cluster(rados_cluster.conf, timeout=5) as c:
        with pytest.raises(ObjectNotFound):
            c.open_ioctx("no-such-pool")
    with pytest.raises(ObjectNotFound):
        io.unlock("nothing", "L", "c")              # no such lock
    with pytest.raises(RadosError) as e:
        io.operate("meta", WriteOp().create(exclusive=True))
        io.operate("meta", WriteOp().create(exclusive=True))
    assert e.value.errno == 17


def test_aio_64_in_flight(io):
    """64 aio writes in flight from one event loop, then 64 aio reads: each comes back
    with its own bytes, and reads past what was written come back as zeros."""
    blocks = {(f"pseg.{i % 4}", (i // 4) * 4096): os.urandom(4096) for i in range(64)}

    async def main():
        await asyncio.gather(*(aio_write(io, oid, d, off) for (oid, off), d in blocks.items()))
        got = await asyncio.gather(*(aio_read(io, oid, 4096, off) for oid, off in blocks))
        tail = await aio_read(io, "pseg.0", 4096, 16 * 4096)
        missing = await aio_read(io, "pseg.9", 4096, 0)
        return got, tail, missing

    got, tail, missing = asyncio.run(main())
    assert got == list(blocks.values())
    assert tail == bytes(4096) and missing == bytes(4096)


def test_aio_errors_are_typed(io):
    """An aio failure reaches the awaiting coroutine as a RadosError with the errno: a
    write past the OSD's largest object (osd_max_object_size, 128 MiB) is EFBIG."""
    async def main():
        with pytest.raises(RadosError) as e:
            await aio_write(io, "big", b"x", 200 << 20)
        await aio_write(io, "big", b"y", 0)             # the loop and ioctx go on working
        return e.value
    e = asyncio.run(main())
    assert e.errno == 27 and "aio_write big" in str(e)
    assert io.read("big", 1) == b"y"


def test_omap_in_guarded_write_op(io):
    io.lock_exclusive("vd.meta", "owner", "cookie-a")
    io.operate("vd.meta", WriteOp().assert_locked("owner", "cookie-a")
               .omap_set({"epoch": b"1", "log.0001": b"\0\1\2"}).write(b"super", 0))
    assert io.omap_get("vd.meta") == {"epoch": b"1", "log.0001": b"\0\1\2"}
    assert io.read("vd.meta", 5) == b"super"
    # a guard for a cookie we do not hold fails the whole op: nothing of it is applied
    with pytest.raises(Busy):
        io.operate("vd.meta", WriteOp().assert_locked("owner", "cookie-b")
                   .omap_set({"epoch": b"2"}).omap_rm(["log.0001"]).write(b"XXXXX", 0))
    assert io.omap_get("vd.meta") == {"epoch": b"1", "log.0001": b"\0\1\2"}
    assert io.read("vd.meta", 5) == b"super"
    io.operate("vd.meta", WriteOp().assert_locked("owner", "cookie-a").omap_rm(["log.0001"]))
    assert io.omap_get("vd.meta") == {"epoch": b"1"}
    many = {f"log.{i:04d}": b"%d" % i for i in range(2500)}      # more than one page
    io.operate("vd.meta", WriteOp().assert_locked("owner", "cookie-a").omap_set(many))
    assert io.omap_get("vd.meta", prefix="log.") == many


def test_lock_refused_broken_and_old_holder_fenced_by_guard(rados_cluster, rados_ns):
    a, ioa = client(rados_cluster, rados_ns)
    b, iob = client(rados_cluster, rados_ns)
    try:
        ioa.lock_exclusive("vd.meta", "owner", "a-cookie", desc="vsand active")
        with pytest.raises(Busy) as e:
            iob.lock_exclusive("vd.meta", "owner", "b-cookie")
        assert e.value.errno == 16
        held = iob.list_lockers("vd.meta", "owner")
        assert held.exclusive
        assert [(x.client, x.cookie) for x in held.lockers] == [(f"client.{a.instance_id()}", "a-cookie")]
        assert held.lockers[0].addr.endswith(a.addrs().split("/")[-1])
        iob.break_lock("vd.meta", "owner", held.lockers[0].client, "a-cookie")
        assert iob.list_lockers("vd.meta", "owner").lockers == []
        with pytest.raises(Busy):
            ioa.operate("vd.meta", WriteOp().assert_locked("owner", "a-cookie").omap_set({"x": b"a"}))
        iob.lock_exclusive("vd.meta", "owner", "b-cookie")
        iob.operate("vd.meta", WriteOp().assert_locked("owner", "b-cookie").omap_set({"x": b"b"}))
        assert ioa.omap_get("vd.meta") == {"x": b"b"}
        iob.unlock("vd.meta", "owner", "b-cookie")
        assert iob.list_lockers("vd.meta", "owner").lockers == []
    finally:
        for x in (ioa, iob, a, b):
            x.close() if hasattr(x, "close") else x.shutdown()


def test_lease_expires_and_renews(rados_cluster, rados_ns):
    a, ioa = client(rados_cluster, rados_ns)
    b, iob = client(rados_cluster, rados_ns)
    try:
        ioa.lock_exclusive("m", "owner", "a", duration=1.5)
        ioa.lock_exclusive("m", "owner", "a", duration=1.5, renew=True)
        with pytest.raises(Busy):
            iob.lock_exclusive("m", "owner", "b", duration=1.5)

        def b_gets_it():
            try:
                iob.lock_exclusive("m", "owner", "b")
                return True
            except Busy:
                return False
        until(b_gets_it, "A's lease to expire", deadline=15)
        assert [x.cookie for x in ioa.list_lockers("m", "owner").lockers] == ["b"]
    finally:
        ioa.close(); iob.close(); a.shutdown(); b.shutdown()


def test_watch_and_list_watchers(rados_cluster, rados_ns):
    a, ioa = client(rados_cluster, rados_ns)
    b, iob = client(rados_cluster, rados_ns)
    try:
        ioa.write_full("vd.meta", b"")
        assert iob.list_watchers("vd.meta") == []
        w = ioa.watch("vd.meta")
        w.check()
        seen = iob.list_watchers("vd.meta")
        assert [(x.client, x.cookie) for x in seen] == [(f"client.{a.instance_id()}", w.cookie)]
        w.close()
        assert iob.list_watchers("vd.meta") == []
        with pytest.raises(ObjectNotFound):
            iob.list_watchers("no-such-object")
    finally:
        ioa.close(); iob.close(); a.shutdown(); b.shutdown()


def test_blocklisted_client_fails_its_next_op(rados_cluster, rados_ns):
    a, ioa = client(rados_cluster, rados_ns, timeout=10)
    b, iob = client(rados_cluster, rados_ns)
    try:
        ioa.write("pseg.0", b"before")
        b.blocklist_add(a.addrs(), expire=120)
        # B's op carries the map epoch with the blocklist: the OSD catches up to it before
        # serving it, so A's next op is refused (takeover does the same with break_lock)
        b.wait_for_latest_osdmap()
        assert iob.read("pseg.0", 6) == b"before"
        with pytest.raises(Blocklisted) as e:
            ioa.write("pseg.0", b"after!")
        assert e.value.errno == 108
        assert iob.read("pseg.0", 6) == b"before"           # nothing of A's write landed
    finally:
        ioa.close(); iob.close(); a.shutdown(); b.shutdown()


def test_unreachable_mon_times_out(tmp_path, rados_cluster):
    conf = tmp_path / "ceph.conf"
    conf.write_text(open(rados_cluster.conf).read().replace(
        "mon host =", f"mon host = 127.0.0.1:{radoskit.free_port()} #"))
    with pytest.raises(TimedOut):         # client_mount_timeout: without it connect hangs
        Cluster(str(conf), timeout=2)


@pytest.mark.rados_exclusive
def test_stopped_osd_gives_timeouts_not_hangs(rados_cluster, rados_ns):
    c, io = client(rados_cluster, rados_ns, timeout=2)
    try:
        io.write("pseg.0", b"ok")
        with radoskit.osd_stopped(rados_cluster):
            with pytest.raises(TimedOut):
                io.write("pseg.0", b"stuck")

            async def aio():
                with pytest.raises(TimedOut):
                    await asyncio.wait_for(aio_read(io, "pseg.0", 2), 30)
            asyncio.run(aio())
        def works():
            try:
                return io.read("pseg.0", 2) in (b"ok", b"st")
            except TimedOut:
                return False
        until(works, "the OSD to serve again after SIGCONT", deadline=30)
    finally:
        io.close()
        c.shutdown()
