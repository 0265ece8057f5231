"""NBD listeners (UNIX, TCP, inherited sockets) and the staged shutdown."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import socket

from ..access import Allowlist, Client, address_of
from ..nbd.handshake import Export, NeedsTLS
from . import budget, contexts
from .committer import Committer
from .connection import NbdConnection
from .stats import Stats

log = logging.getLogger("vsand.server")


SWEEP = 2.0      # seconds between looks at idle connections
# A connection nbd_allow refuses (or whose TCP peer has no readable address) is
# answered (ERR_POLICY says why) but holds no slot of max_connections: it gets a
# short handshake deadline, and only so many stay open at once; past that, one is
# closed before the greeting. An excluded host cannot lock the allowed ones out.
OUTSIDER_TIMEOUT = 5.0
MAX_OUTSIDERS = 16
IO_THREADS = 16  # drive reads that miss the page cache, direct writes and commits run on these


class Inline(concurrent.futures.Executor):
    """``io_threads = 0``: a job runs where it is submitted, on the loop, as it did
    before worker threads: for comparisons, and for tests that count system calls
    per thread (strace's fault injection does)."""

    def submit(self, fn, /, *args, **kwargs):
        f = concurrent.futures.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 (the future carries it)
            f.set_exception(e)
        return f


class NbdServer:
    def __init__(self, exports, max_connections: int = 1000, idle_timeout: float = 0,
                 memory_budget: int = budget.DEFAULT, io_threads: int = IO_THREADS,
                 ring=None, allow: Allowlist | None = None, tls=None):
        """``exports``: lookup(name) -> (Export, BlockDevice) | None, listing() ->
        [Export], begin_flush(), peers(name), changes(name, since), rules(name) (see
        blockdev.Exports). ``allow``: the TCP clients served (access.py); None: all. ``idle_timeout`` 0: never. ``memory_budget``:
        bytes shared by all connections beyond their floors (server/budget.py).
        ``io_threads`` 0: drive I/O runs on the loop, one call at a time. ``ring``:
        reads that miss the page cache go through it (physical/uring.py: the
        daemon opens it) when the job allows, else to the worker threads; the
        server watches its ``fileno()`` and calls ``reap()``, and closes it once
        its ``inflight`` reads are done. ``tls``: None (STARTTLS is refused) or
        the TCP listeners' TLS settings (vsand/tls.py: ``mode``, ``context``,
        ``describe()``); UNIX sockets stay plain."""
        self.exports = exports
        self.allow = allow or Allowlist()
        self.tls = tls
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.budget = budget.MemoryBudget(memory_budget)
        self._sweeper = None
        self.io = (concurrent.futures.ThreadPoolExecutor(io_threads, thread_name_prefix="vsand-io")
                   if io_threads else Inline())
        self.connections: set[NbdConnection] = set()
        self.outsiders: set[NbdConnection] = set()   # refused by nbd_allow: not in max_connections
        self.stopping = False
        self.committer = Committer(exports.begin_flush, self.io)
        self.ring = ring
        if ring is not None:
            asyncio.get_running_loop().add_reader(ring.fileno(), ring.reap)
        self.servers: list[asyncio.base_events.Server] = []
        self.requests = 0          # requests handled so far (the task throttle's foreground signal)
        self.stats = Stats()       # per export, kept by the connections (read by vsand/web)

    # ---- what the handshake sees ----------------------------------------------------
    def lookup_export(self, name: str) -> Export | None:
        got = self.exports.lookup(name)
        return got[0] if got else None

    def list_exports(self) -> list[Export]:
        return self.exports.listing()

    def access(self, exp: Export, client: Client) -> Export | str:
        """Export ``exp`` as ``client`` may use it, or why it may not (access.py).
        Rules are read now, so a change applies to the next decision."""
        why, read_only = self._verdict(exp.name, client)
        if why is not None:
            if not client.names - {""} and self.tls is not None and self.tls.verify_peer:
                return NeedsTLS(why)      # a client certificate may open it (handshake.py)
            return why
        return dataclasses.replace(exp, read_only=True) if read_only and not exp.read_only else exp

    def device(self, name: str):
        return self.exports.lookup(name)[1]

    def contexts(self, name: str, client: Client | None = None) -> list[str]:
        """Block status contexts export ``name`` offers beyond base:allocation; to
        ``client``, only those naming LDs it may use (their names and how they
        differ are theirs to hide)."""
        offered = contexts.offered(self.exports, name)
        if client is None:
            return offered
        return [c for c in offered if (ld := contexts.subject(c)) is None or self._admits(ld, client)]

    def _admits(self, ld: str, client: Client) -> bool:
        return self._verdict(ld, client)[0] is None

    def _verdict(self, name: str, client: Client) -> tuple[str | None, bool]:
        """(why ``client`` may not use LD ``name`` or None, read-only for it)."""
        try:
            return self.exports.rules(name).check(client)
        except ValueError as e:          # a rule the daemon cannot read refuses, never serves
            log.error("export %s: unreadable access rules: %s", name, e)
            return "the export's access rules cannot be read", False

    def status(self, name: str, dev, ctx: str) -> contexts.Status:
        return contexts.status(self.exports, name, dev, ctx)

    # ---- per export ------------------------------------------------------------------
    def count(self, name: str) -> int:
        """Connections serving export ``name``."""
        return sum(1 for c in self.connections if c.export is not None and c.export.name == name)

    def disconnect(self, name: str, why: str) -> int:
        """Drops every connection to export ``name`` (e.g. it is being deleted)."""
        gone = [c for c in self.connections if c.export is not None and c.export.name == name]
        for c in gone:
            c.abort(why)
        return len(gone)

    def rename(self, old: str, new: str) -> None:
        """Export ``old`` is called ``new`` now: its connections go on serving it (they
        hold the device, not the name) and count under the new name."""
        for c in self.connections:
            if c.export is not None and c.export.name == old:
                c.export = dataclasses.replace(c.export, name=new)
        self.stats.rename(old, new)

    def forget(self, name: str) -> None:
        """Export ``name`` is gone (deleted): its figures go with it."""
        self.stats.forget(name)

    def excluded(self, client: Client) -> str | None:
        """Why nbd_allow refuses a new connection, or None."""
        if not self.allow.admits(client):
            return f"address {client.address} is not allowed on this listener (nbd_allow)"
        return None

    def admit(self, conn, transport) -> bool:
        """Decides a new connection: its address, the set it counts in (``conn.room``),
        its handshake deadline, and why every option is refused (``conn.hs.refused``).
        False: closed at once, before the greeting."""
        try:
            family = getattr(transport.get_extra_info("socket"), "family", None)
            conn.address = address_of(transport.get_extra_info("peername"), family)
            why = self.excluded(Client(conn.address))
        except ValueError as e:          # a TCP peer nobody can judge: refused, never exempt
            why = str(e)
        if why is not None:
            conn.room, conn.handshake_timeout = self.outsiders, OUTSIDER_TIMEOUT
        elif len(self.connections) >= self.max_connections:
            why = f"too many connections (the limit is {self.max_connections})"
        if why is None:
            return True
        self.stats.refused += 1
        if conn.room is self.outsiders and len(self.outsiders) >= MAX_OUTSIDERS:
            conn.why = (f"refused: {why}; closed before the greeting ({MAX_OUTSIDERS} "
                        f"refused connections are open already)")
            log.warning("connection %s %s", conn.peer, conn.why)
            transport.close()
            return False
        log.warning("connection %s refused: %s", conn.peer, why)
        conn.hs.refused = why
        return True

    def _sweep(self) -> None:
        """Gives idle connections' grown buffers back and closes those idle past
        the timeout."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for c in list(self.connections):
            c.trim()
            if self.idle_timeout and c.idle_since(now) > self.idle_timeout:
                c.shutdown(f"idle for {self.idle_timeout} s (idle_timeout)")
        self._sweeper = loop.call_later(SWEEP, self._sweep)

    # ---- listeners -----------------------------------------------------------------
    def _factory(self):
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP, self._sweep)
        return NbdConnection(self)

    async def listen_socket(self, sock: socket.socket, inherited: bool = True) -> None:
        """A listening socket bound already (listeners.py): inherited from systemd
        socket activation, or bound by the daemon before it opened its pool."""
        loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            srv = await loop.create_unix_server(self._factory, sock=sock)
        else:
            srv = await loop.create_server(self._factory, sock=sock)
        self.servers.append(srv)
        where = sock.getsockname()
        if not inherited:
            where = f"unix:{where}" if sock.family == socket.AF_UNIX else "%s:%d" % where[:2]
        tls = f" ({self.tls.describe()})" if self.tls is not None and sock.family != socket.AF_UNIX else ""
        log.info("NBD listening on %s%s%s", "inherited socket " if inherited else "", where, tls)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let every connection finish what it has in flight, close."""
        self.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for srv in self.servers:
            srv.close()
        for conn in list(self.connections | self.outsiders):
            conn.shutdown("daemon shutdown")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self.connections or self.outsiders) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections | self.outsiders):
            conn.abort(f"daemon shutdown (replies not done within {timeout:g} s)")
        for srv in self.servers:
            await srv.wait_closed()
        await loop.run_in_executor(None, self.io.shutdown)   # reads in flight finish
        ring = self.ring
        if ring is not None:
            deadline = loop.time() + timeout
            while ring.inflight and loop.time() < deadline:
                await asyncio.sleep(0.005)     # the kernel still writes into their buffers
            loop.remove_reader(ring.fileno())
            if not ring.inflight:
                ring.close()
            self.ring = None
