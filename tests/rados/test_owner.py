"""Pool ownership on RADOS (plugins/rados/owner.py) and the UDP heartbeats between an
active daemon and its standby (plugins/rados/heartbeat.py), against the run's real cluster.

Each test has its own namespace, so its own metadata object and lock. Waits are on
conditions with generous deadlines; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from daemonkit import ROOT
from plugins.rados import Blocklisted, Busy, Cluster, WriteOp
from plugins.rados.heartbeat import Beacon, Standby, encode
from plugins.rados.owner import META_OID, Owner

LOOP = ("127.0.0.1", 0)
DEADLINE = 60.0


class Side:
    """One daemon's view: its own Cluster handle, IoCtx and Owner."""

    def __init__(self, rc, ns, timeout=10):
        self.cluster = Cluster(rc.conf, timeout=timeout)
        self.io = self.cluster.open_ioctx(rc.pool, ns)
        self.owner = Owner(self.cluster, self.io)

    def close(self):
        self.io.close()
        self.cluster.shutdown()


@pytest.fixture
def sides(rados_cluster, rados_ns):
    made = []

    def make():
        made.append(Side(rados_cluster, rados_ns))
        return made[-1]
    yield make
    for s in made:
        s.close()


def until(cond, what, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def async_until(cond, what, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def meta_write(side, value: bytes, guarded=True):
    op = WriteOp().omap_set({"x": value})
    side.io.operate(META_OID, side.owner.guard(op) if guarded else op)


def test_acquire_busy_names_holder_release(sides):
    a, b = sides(), sides()
    assert a.owner.holder() is None and a.owner.epoch() == 0
    assert a.owner.acquire() == 1
    with pytest.raises(Busy) as e:
        b.owner.acquire()
    assert e.value.errno == errno.EBUSY
    assert f"client.{a.cluster.instance_id()}" in str(e.value) and a.owner.cookie in str(e.value)
    assert b.owner.holder().cookie == a.owner.cookie and a.owner.holds()
    assert a.owner.cookie != b.owner.cookie
    a.owner.release()
    assert a.owner.holder() is None
    assert b.owner.acquire() == 2 and b.owner.holds()


def test_guard_fails_once_the_lock_is_broken(sides):
    a, b = sides(), sides()
    a.owner.acquire()
    meta_write(a, b"a1")
    h = b.owner.holder()
    b.io.break_lock(META_OID, "vsand", h.client, h.cookie)
    with pytest.raises(Busy) as e:
        meta_write(a, b"a2")
    assert e.value.errno == errno.EBUSY
    assert b.io.omap_get(META_OID, prefix="x") == {"x": b"a1"}


def test_take_over_fences_a_live_handle(sides):
    a, b = sides(), sides()
    epoch = a.owner.acquire()
    lost = []
    a.owner.watch(lost.append, timeout=5)
    meta_write(a, b"a")
    assert b.owner.take_over(b.owner.holder()) == epoch + 1
    assert b.owner.epoch() == epoch + 1 and b.owner.holds()
    with pytest.raises(Blocklisted) as e:
        meta_write(a, b"stale")
    assert e.value.errno == errno.ESHUTDOWN
    with pytest.raises(Blocklisted):
        a.io.write("vsand.d000.00000000", b"stale")
    until(lambda: lost, "the old owner's watch to report the loss")
    assert lost[0] == errno.ENOTCONN
    meta_write(b, b"b")
    assert b.io.omap_get(META_OID, prefix="x") == {"x": b"b"}
    assert b.io.read("vsand.d000.00000000", 5) == bytes(5)


CHILD = """
import sys, threading
from plugins.rados import Cluster, RadosError, WriteOp
from plugins.rados.owner import META_OID, Owner
c = Cluster(sys.argv[1], timeout=10)
io = c.open_ioctx(sys.argv[2], sys.argv[3])
o = Owner(c, io)
epoch = o.acquire()
lost = threading.Event()
errs = []
o.watch(lambda err: (errs.append(err), lost.set()), timeout=5)
print("ready", epoch, o.cookie, flush=True)
n = 0
while True:                    # an owner busy updating its metadata, as a daemon is
    n += 1
    try:
        io.operate(META_OID, o.guard(WriteOp()).omap_set({"x": b"%d" % n}))
    except RadosError as e:
        lost.wait(30)
        print("fenced", e.errno, errs[0] if errs else 0, flush=True)
        break
    lost.wait(0.02)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["kill", "stop"])
def test_standby_takes_over_from_a_dead_owner(rados_cluster, rados_ns, sides, sig):
    """A daemon that acquires, watches (timeout 5 s) and keeps updating its metadata is
    kill -9'd or SIGSTOPped: with no heartbeat ever heard, the standby finds the holder
    alive while it is, and takes over once the OSD has dropped the dead watch. A stopped
    owner that is resumed afterwards finds itself fenced (ESHUTDOWN, and its watch reports
    ENOTCONN), and nothing of it lands."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, rados_cluster.conf, rados_cluster.pool,
                              rados_ns], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        word, epoch, cookie = child.stdout.readline().split()
        assert word == "ready"
        b = sides()

        async def main():
            async with Standby(LOOP, rados_cluster.pool, check_every=0.1) as sb:
                task = asyncio.create_task(sb.wait_for_takeover(b.owner, takeover_after=0.5))
                await async_until(lambda: sb.decisions["holder alive"] >= 2 or task.done(),
                                  "the standby to see the holder alive")
                assert not task.done()
                child.send_signal(sig)
                return await asyncio.wait_for(task, DEADLINE), sb.decisions
        new_epoch, decisions = asyncio.run(main())
        assert new_epoch == int(epoch) + 1
        assert decisions["holder gone"] == 1
        assert b.owner.holds() and b.owner.holder().cookie != cookie
        last = b.io.omap_get(META_OID, prefix="x")["x"]
        assert int(last) > 0
        if sig == signal.SIGSTOP:
            child.send_signal(signal.SIGCONT)
            out = child.stdout.readline().split()
            assert out == ["fenced", str(errno.ESHUTDOWN), str(errno.ENOTCONN)]
            assert b.io.omap_get(META_OID, prefix="x")["x"] == last
        meta_write(b, b"b")
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGCONT)
            child.kill()
        child.wait()


def test_heartbeats_hold_off_a_standby_until_they_stop(rados_cluster, sides):
    """The holder has no watch here, so only its heartbeats keep the standby from taking
    over; junk and another pool's heartbeats do not count. Once the beacon stops, the
    standby takes over and the old holder's guarded writes fail."""
    a, b = sides(), sides()
    epoch = a.owner.acquire()
    pool = rados_cluster.pool

    async def main():
        async with Standby(LOOP, pool, check_every=0.05) as sb:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for junk in (b"\xc1 not msgpack", encode({"junk": 1}),
                             encode({"role": "active", "epoch": 1, "pool": [1], "seq": 1}),
                             encode({"role": "active", "epoch": 99, "pool": "other", "seq": 1}),
                             encode({"role": "active", "epoch": epoch, "pool": pool, "seq": 1})):
                    s.sendto(junk, sb.addr)
                await async_until(lambda: sb.heard, "the one real heartbeat")
            assert sb.heard == 1 and sb.active_epoch == epoch
            async with Beacon(LOOP, sb.addr, pool, epoch, interval=0.05) as beacon:
                task = asyncio.create_task(sb.wait_for_takeover(b.owner, takeover_after=2.0))
                await async_until(lambda: beacon.standby_heard >= 20 or task.done(),
                                  "20 heartbeats answered")
                assert not task.done() and sum(sb.decisions.values()) == 0
            return await asyncio.wait_for(task, DEADLINE), sb.decisions
    new_epoch, decisions = asyncio.run(main())
    assert new_epoch == epoch + 1 and b.owner.holds()
    assert decisions["holder gone"] == 1 and decisions["holder alive"] == 0
    with pytest.raises(Blocklisted):
        meta_write(a, b"stale")


def test_no_takeover_while_the_holders_watch_lives(rados_cluster, sides):
    """Heartbeats stop but the holder's watch is alive (a live handle: a cut link between
    the daemons, a stalled loop): the standby keeps deciding "holder alive" and leaves
    it alone. Once the watch goes, it takes over."""
    a, b = sides(), sides()
    epoch = a.owner.acquire()
    watch = a.owner.watch(lambda err: None, timeout=5)
    pool = rados_cluster.pool

    async def main():
        async with Standby(LOOP, pool, check_every=0.05) as sb:
            async with Beacon(LOOP, sb.addr, pool, epoch, interval=0.05):
                task = asyncio.create_task(sb.wait_for_takeover(b.owner, takeover_after=0.3))
                await async_until(lambda: sb.heard >= 5, "5 heartbeats")
            await async_until(lambda: sb.decisions["holder alive"] >= 8 or task.done(),
                              "8 looks at the live holder")
            assert not task.done()
            assert a.owner.holds()
            await asyncio.to_thread(meta_write, a, b"a")          # still the owner
            await asyncio.to_thread(watch.close)
            return await asyncio.wait_for(task, DEADLINE)
    assert asyncio.run(main()) == epoch + 1
    assert b.owner.holds()
    with pytest.raises(Blocklisted):
        meta_write(a, b"stale")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_beacon_hears_a_newer_active_and_gives_up(host):
    """Two actives heartbeating each other: the one with the lower epoch calls on_lost
    with the newer epoch; the newer one hears the stale one and carries on."""
    if host == "::1" and not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")

    async def main():
        lost = asyncio.Event()
        got = []

        def on_lost(e):
            got.append(e)
            lost.set()
        nowhere = (host, 9)                 # the discard port, until each knows the other's
        async with Beacon((host, 0), nowhere, "p", 4, on_lost=on_lost, interval=0.05) as old, \
                Beacon((host, 0), nowhere, "p", 5, on_lost=on_lost, interval=0.05) as new:
            old.peer, new.peer = new.addr, old.addr
            await asyncio.wait_for(lost.wait(), DEADLINE)
            await async_until(lambda: new.active_heard >= 5 and old.active_heard >= 5,
                              "5 heartbeats each way")
        return got, old.lost_to, new.lost_to
    assert asyncio.run(main()) == ([5], 5, None)
