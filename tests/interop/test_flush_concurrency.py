"""A FLUSH whose fsync is slow stalls no other client (DESIGN.md §9, §13).

The server runs in this process on a real pool so that one drive's fsync can be
held until the test lets it go; the clients are raw NBD sockets. While client A's
FLUSH waits inside that fsync, client B's reads and writes are answered, and B's
own FLUSH gets a commit of its own (the one in flight began before B's write)."""

from __future__ import annotations

import asyncio
import os
import threading
from types import SimpleNamespace

from poolkit import make_pool
from test_nbd_bad_input import Conn
from vsand.daemon import Exports
from vsand.listeners import Listeners
from vsand.nbd import constants as C
from vsand.server.nbd_server import NbdServer
from vsand.units import MiB

A = b"a" * 4096
B = b"b" * 4096


class Served:
    """An NbdServer on a UNIX socket, its loop in a thread."""

    def __init__(self, pool, path: str):
        self.pool, self.path = pool, path
        self.ready = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self):
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self.server = NbdServer(Exports(self.pool))
        self.listeners = Listeners([])
        self.listeners.bind_unix(self.path, self.path + ".control")
        for sock in self.listeners.nbd:
            await self.server.listen_socket(sock, inherited=False)
        self.ready.set()
        await self.stop.wait()
        await self.server.stop(timeout=5)
        self.listeners.close()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(30)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


def test_a_flush_held_in_fsync_stalls_no_other_client(tmp_path):
    pool, _ = make_pool(tmp_path)
    ld = pool.create_ld("lun", 64 * MiB, raid=0)
    ld.write(0, A)
    ld.write(4 * MiB, A)
    pool.flush()
    gate, entered = threading.Event(), threading.Event()
    drive = pool.drives[0]
    real = drive.fsync
    calls = []

    def held_fsync():
        calls.append(threading.current_thread().name)
        entered.set()
        assert gate.wait(60), "the test never let the fsync go"
        real()

    drive.fsync = held_fsync
    sock = os.path.join(str(tmp_path), "nbd.sock")
    try:
        with Served(pool, sock):
            addr = SimpleNamespace(sock=sock)
            a = Conn(addr).negotiate("lun")
            b = Conn(addr).negotiate("lun")
            a.write(0, B)                      # an allocated segment: a data sync only
            fa = a.request(C.CMD_FLUSH)
            assert entered.wait(30)
            for _ in range(50):               # answered while A's commit sits in fsync
                assert b.read(4 * MiB, 4096) == A
            b.write(8 * MiB, B)               # a new segment, mapped during the commit
            assert b.read(8 * MiB, 4096) == B
            fb = b.request(C.CMD_FLUSH)
            assert len(calls) == 1
            gate.set()
            assert a.reply_errno(fa) == 0
            assert b.reply_errno(fb) == 0
            # B's FLUSH had a commit of its own: A's began before B's write.
            assert len(calls) >= 2, calls
            assert all(name.startswith("vsand-io") for name in calls), calls
            a.close()
            b.close()
    finally:
        gate.set()
        drive.fsync = real
    pool.close()
