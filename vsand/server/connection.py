"""One NBD client connection on asyncio (a BufferedProtocol).

Requests are handled one at a time, in arrival order, while the client takes its
replies: once the kernel's socket buffer refuses part of a reply, the connection
stops handling requests and stops reading until the transport has handed all it
holds to the kernel, so a client that does not read only ever holds its last
batch of replies (at most one READ piece, server/reads.py) and one WRITE piece
(wire.PIECE) of requests. The transport keeps each reply object whole until its
last byte is sent, the part the kernel took included: ``unsent`` counts them
whole. Each connection's READs are answered by its ``Reads`` (on the loop,
through io_uring or worker threads, or streamed in pieces) and its WRITEs by its
``Writes`` (on the loop, or in worker threads for direct drives). Beyond
budget.FLOOR, what a connection holds comes from the daemon's memory budget
(server/budget.py); while that is spent, READs and WRITEs go in smaller pieces,
and a connection with no room at all stops handling requests and reading until
the budget or its own replies give some back.

Trims and write-zeroes run on the loop. FLUSH and FUA replies wait for the
server's group commit, which makes one commit serve every connection waiting at
that moment. Replies to everything before a DISC or a framing error are sent
before the connection closes. A client that disappears only ever loses its own
connection: every write checks ``closed`` first.

Every connection that ends says so in one INFO line with its export, its peer and
why (``ended``): whoever decides to close records the reason first; a close
nobody here decided is the client's (or its socket's) doing.

TLS (TCP only; UNIX sockets stay plain): STARTTLS swaps ``transport`` for a TLS one
(server/starttls.py), the rest runs as in plain text (``hs.tls_active`` from then on);
``peer_names`` (frozenset[str]) holds the names of the client certificate TLS verified
against tls_ca (subject commonName, DNS and URI subjectAltNames), set before any
option inside TLS is read; empty without TLS or without a verified certificate.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from time import perf_counter     # latencies: the loop's clock may be cached per iteration (uvloop)

from ..access import Client
from ..nbd import constants as C
from ..peer import describe_peer
from ..nbd import wire
from ..nbd.handshake import Closed, Handshake, Negotiated, StartTLS
from . import contexts, starttls
from .budget import Share
from .reads import Broken, Reads
from .writes import Writes

log = logging.getLogger("vsand.server")
HANDSHAKE_TIMEOUT = 60.0
SEND_NOW = 64 << 10     # a reply this large goes to the transport before the next request
MAX_INFLIGHT = 8 << 20  # bytes of READs off the loop before the connection waits for them


def nbd_errno(exc: BaseException) -> int:
    """The one place that turns a storage error into an NBD error value."""
    e = getattr(exc, "errno", None)
    if e in (C.EPERM, C.EIO, C.EINVAL, C.ENOSPC, C.EOVERFLOW, C.ENOTSUP):
        return e
    if e in (122, 27):          # EDQUOT, EFBIG
        return C.ENOSPC
    if e == 30:                 # EROFS
        return C.EPERM
    return C.EIO


class NbdConnection(asyncio.BufferedProtocol):
    def __init__(self, server):
        self.server = server
        self.transport = None
        self.closed = False
        self.hs = Handshake(server.lookup_export, server.list_exports, lambda: server.stopping,
                            contexts=self._contexts, access=self._access)
        self._hsbuf = bytearray(16384)   # options longer than this arrive over several recvs
        self.reader: wire.RequestReader | None = None
        self.dev = None
        self.export = None
        self.tflags = 0
        self.structured = False
        self.meta: dict[int, str] = {}
        self.statuses: list = []  # (context id, what BLOCK_STATUS reports for it), by id
        self.waiting = 0          # replies parked for a commit
        self.disconnecting = False
        self.paused = False       # the client is not taking its replies
        self.reads: Reads | None = None
        self.out: list = []       # replies built, not yet handed to the transport
        self.unsent = 0           # bytes of reply objects the transport keeps
        self.writes: Writes | None = None
        self.last = 0.0           # loop time of the last bytes received
        self.inflight = 0         # READs and WRITE pieces whose drive I/O runs off the loop
        self.inflight_bytes = 0
        self.landed: list = []    # reads done off the loop, not yet answered
        self.mem = Share(server.budget, self._held, self._budget_resume)
        self.starved = False      # reading stopped for memory (the budget, or reads in flight)
        self._timer = None
        self.stats = None         # the export's stats.ExportStats, once negotiated
        self.t0 = 0.0             # perf_counter() when the request being handled was taken
        self.peer = "?"
        self.address = None       # a TCP client's address (access.py); None: UNIX socket
        self._logged = 0          # export refusals (hs.denied) logged so far
        self.why: str | None = None   # why the daemon closes it (None: the client did)
        self.peer_names: frozenset[str] = frozenset()   # see the module doc
        self.tls_pending: bytearray | None = None   # during STARTTLS: bytes read inside TLS early
        self.room = server.connections    # or server.outsiders (NbdServer.admit)
        self.handshake_timeout = HANDSHAKE_TIMEOUT

    # ---- asyncio callbacks ---------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        self.peer = describe_peer(transport)
        if not self.server.admit(self, transport):
            return
        self.hs.tls = starttls.mode(self.server.tls, transport)
        self.room.add(self)
        # Backpressure (see the module doc): paused as soon as the transport keeps
        # any reply bytes, resumed once it keeps none, which frees them all.
        transport.set_write_buffer_limits(high=0, low=0)
        transport.write(Handshake.greeting())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.handshake_timeout, self._timeout)
        # kept: asyncio.get_running_loop() costs a getpid() system call each time
        self._clock, self._soon = loop.time, loop.call_soon

    def connection_lost(self, exc):
        if self.closed:      # a failed STARTTLS may end it twice (tls_failed, the TLS layer)
            return
        self.ended(exc)
        self.closed = True
        self.room.discard(self)
        self.mem.close()
        if self._timer:
            self._timer.cancel()

    def pause_writing(self):
        self.paused = True
        self.transport.pause_reading()

    def resume_writing(self):
        self.paused = False
        self.unsent = 0
        if self.closed:
            return
        if not self.starved:
            self.transport.resume_reading()
        if self.reader is not None:
            self._guarded(self._process)

    def eof_received(self):
        return False

    def get_buffer(self, sizehint):
        if self.reader is not None:
            return self.reader.get_buffer(sizehint)
        return memoryview(self._hsbuf)

    def buffer_updated(self, nbytes):
        self.last = self._clock()
        if self.reader is None:
            self._guarded(self._handshake, bytes(self._hsbuf[:nbytes]))
        else:
            self.reader.buffer_updated(nbytes)
            self._guarded(self._process)

    def _guarded(self, fn, *args) -> None:
        """Runs a callback's work: never let one client's bytes take the daemon down."""
        try:
            fn(*args)
        except Exception:
            log.exception("connection %s: internal error, closing", self.peer)
            self.abort("internal error (see the traceback above)")

    # ---- what the server's sweep looks at -----------------------------------------------
    def idle_since(self, now: float) -> float:
        """Seconds since the client last sent anything, 0 while a request of it is in
        progress (or before the handshake ended: the handshake has its own timeout)."""
        if self.reader is None or self.waiting or self.inflight or self.reads.stream is not None \
                or self.reader.pending():
            return 0.0
        return now - self.last

    def trim(self) -> None:
        if self.reader is not None:
            self.reader.trim()
            if self.mem.grant and not self.closed:
                self.mem.settle()

    # ---- the memory budget -----------------------------------------------------------
    def _held(self) -> int:
        """Bytes this connection holds beyond an idle one's (replies built or kept
        by the transport, reads in worker threads, a receive buffer grown for a
        WRITE). Replies of a few bytes sent outside ``_send`` are not counted."""
        return (self.unsent + sum(map(len, self.out)) + self.inflight_bytes
                + self.reader.extra())

    def _room(self, n: int) -> int:
        """Bytes of an ``n``-byte reply that may be read now (see Share.reserve);
        0: the connection stops reading until resumed."""
        got = self.mem.reserve(n)
        if not got and self.reader.shrink():
            got = self.mem.reserve(n)
        if not got:
            self._starve()
        return got

    def _write_room(self, n: int, held: int) -> int:
        got = self.mem.reserve(n, held, wait=False)
        self.mem.used += got
        return got

    def _starve(self) -> None:
        self.starved = True
        self.transport.pause_reading()

    def _budget_resume(self) -> None:
        if not self.closed and not self.paused:
            self._guarded(self._process)

    # ---- handshake -----------------------------------------------------------------
    def _timeout(self):
        if self.reader is None and not self.closed:
            self.abort(f"handshake not finished within {self.handshake_timeout:g} s")

    def _access(self, exp):
        # the names are read now: TLS may have verified a certificate since the greeting
        return self.server.access(exp, Client(self.address, self.peer_names))

    def _contexts(self, name):
        return self.server.contexts(name, Client(self.address, self.peer_names))

    def _handshake(self, data: bytes) -> None:
        if self.tls_pending is not None:    # the TLS layer read it before start_tls returned
            self.tls_pending += data
            return
        out, outcome = self.hs.receive(data)
        for name, why in self.hs.denied[self._logged:]:
            log.warning("connection %s refused export %s: %s", self.peer, name or "''", why)
        self._logged = len(self.hs.denied)
        if out:
            self.transport.write(out)
        if isinstance(outcome, Closed):
            self.why = self.why or f"handshake ended: {outcome.reason}"
            self.transport.close()     # sends what is buffered first
        elif isinstance(outcome, StartTLS):
            starttls.begin(self, outcome.leftover)
        elif isinstance(outcome, Negotiated):
            self._timer.cancel()
            self._hsbuf = None
            self.export = outcome.export
            self.dev = self.server.device(outcome.export.name)
            self.stats = self.server.stats.export(outcome.export.name)
            self.stats.connections += 1
            self.tflags = outcome.flags
            self.structured = outcome.structured
            self.meta = outcome.meta_contexts
            self.statuses = [(cid, self.server.status(outcome.export.name, self.dev, ctx))
                             for cid, ctx in sorted(self.meta.items())]
            self.reader = wire.RequestReader(room=self._write_room)
            self.reads = Reads(self.dev, self.structured, self.mem, self._send, self._room,
                               self._storage_error, self._offload,
                               partial(self.stats.took, C.CMD_READ))
            self.writes = Writes(self.dev, self.reader, self._track, self._in_worker,
                                 self._answer_later, self._finish)
            if outcome.leftover:
                self.reader.feed(outcome.leftover)
                self._process()

    # ---- transmission --------------------------------------------------------------
    def _process(self) -> None:
        out = self.out
        reads = self.reads
        try:
            if reads.stream is None or not self.paused and reads.go_on(out):
                self._requests(out)
        except wire.ProtocolError as e:
            self.why = self.why or f"protocol violation: {e}"
            self._send(out)
            self.disconnecting = True
            self._close_when_answered()
            return
        except Broken as e:
            log.error("connection %s: %s; closing", self.peer, e)
            self._send(out)
            self.abort(f"error: {e}")
            return
        self._send(out)
        m = self.mem
        if m.grant:
            m.settle()
        if self.starved and not m.waiting and self.inflight_bytes < MAX_INFLIGHT \
                and reads.stream is None:
            self.starved = False
            if not self.paused and not self.disconnecting:
                self.transport.resume_reading()
        if self.disconnecting:
            self._close_when_answered()

    def _requests(self, out: list) -> None:
        """Handles requests until none is complete, the client stops taking replies,
        a READ is left half sent, or a DISC."""
        it = self.reader.requests()
        reads = self.reads
        while not (self.paused or self.disconnecting or reads.stream is not None or self.closed
                   or self.inflight_bytes >= MAX_INFLIGHT):
            req = next(it, None)
            if req is None:
                return
            self._request(out, *req)
            if reads.stream is not None and not self.paused:
                reads.go_on(out)
            # Hand large replies over at once: the transport pauses us when the
            # client lags, instead of queueing (and memmoving) a whole batch.
            if len(out) > 64 or out and len(out[-1]) >= SEND_NOW:
                self._send(out)
        if self.inflight_bytes >= MAX_INFLIGHT:
            self._starve()       # requests the client keeps sending would pile up unread

    def _send(self, out: list) -> bool:
        """Hands ``out`` to the client; False once it takes no more replies."""
        if out and not self.closed:
            self.transport.writelines(out)
            if self.paused:
                self.unsent += sum(map(len, out))    # kept whole, the part sent included
        out.clear()
        return not (self.paused or self.closed)

    def _deliver(self, reply: list) -> None:
        """A reply made outside request handling: never inside the bytes of a READ
        being streamed."""
        if reply and not self.closed and not self.reads.hold(reply):
            self._send(reply)

    def _offload(self, job, nbytes: int, answer) -> None:
        """Has a read job's drive I/O done off the loop, ``nbytes`` counted as held
        meanwhile; then, on the loop, ``answer(error, reply)`` puts the reply in the
        list ``reply``, which is None once the connection has closed."""
        self._track(1, nbytes)
        t0 = self.t0
        landed = lambda err: self._offloaded(err, nbytes, answer, t0)    # noqa: E731
        ring = self.server.ring
        if ring is None or not job.start(ring, landed):
            self._in_worker(job.run, landed)

    def _offloaded(self, err, nbytes: int, answer, t0: float) -> None:
        # Reads land in bursts (a ring's completions come together): their replies
        # go out in one write, on the loop's next turn, not one system call each.
        if not self.landed:
            self._soon(self._answer_landed)
        self.landed.append((err, nbytes, answer, t0))

    def _answer_landed(self) -> None:
        landed, self.landed = self.landed, []
        reply: list = []
        took, now = self.stats.took, perf_counter()
        for err, nbytes, answer, t0 in landed:
            self._track(-1, -nbytes)
            if self.closed:
                answer(err, None)         # it still ends its job
            else:
                self._guarded(answer, err, reply)
                took(C.CMD_READ, now - t0)
        self._replied(reply)

    def _answer_later(self, answer) -> None:
        """A reply made when a worker finished: ``answer(reply)`` fills the list."""
        if self.closed:
            return
        reply: list = []
        self._guarded(answer, reply)
        self._replied(reply)

    def _replied(self, reply: list) -> None:
        if self.closed:
            return
        self._deliver(reply)
        if self.disconnecting:
            self._close_when_answered()
        elif not self.paused:
            self._guarded(self._process)     # it may have waited for room in flight

    def _close_when_answered(self) -> None:
        if not self.closed:
            self.transport.pause_reading()    # nothing after a DISC is read
        if not self.waiting and not self.inflight and self.reads.stream is None and not self.closed:
            self.transport.close()        # sends what is queued first

    def _request(self, out, cmd, flags, cookie, off, length, payload) -> None:
        if cmd == wire.WRITE_CONT:
            self.writes.piece(out, payload)
            return
        self.server.requests += 1       # background tasks pace themselves by this
        self.t0 = t0 = perf_counter()
        dev = self.dev
        err, msg = wire.check(cmd, flags, off, length, dev.size, self.tflags, bool(self.meta))
        if not err and cmd == C.CMD_BLOCK_STATUS and off + max(length, 1) > dev.size:
            err, msg = C.EINVAL, "block status beyond the end of the export"
        if cmd == C.CMD_DISC and not err:
            self.why = self.why or "client disconnect (NBD_CMD_DISC)"
            self.disconnecting = True       # DISC gets no reply
            return
        st = self.stats
        if err:
            if cmd == C.CMD_WRITE and payload is not None:
                self.reader.discard_write()
            st.error(err)
            out.append(wire.error_reply(cookie, err, msg, self.structured))
            return
        # Counted as handled; timed when the reply is made (_done, _finish, the
        # landing of a READ's drive I/O, the end of a streamed READ, a commit).
        st.ops[cmd] += 1
        st.bytes[cmd] += length
        if cmd == C.CMD_WRITE:
            self.writes.start(out, flags, cookie, off, payload, t0)
            return
        try:
            if cmd == C.CMD_READ:
                n = self.inflight
                self.reads.read(out, flags, cookie, off, length, t0)
                if self.inflight == n and self.reads.stream is None:
                    st.took(cmd, perf_counter() - t0)     # answered here
                return
            if cmd == C.CMD_FLUSH:
                self._after_commit(wire.simple(cookie), cmd, t0)
                return
            elif cmd == C.CMD_TRIM:
                dev.trim(off, length)
            elif cmd == C.CMD_WRITE_ZEROES:
                dev.write_zeroes(off, length, not flags & C.CMD_FLAG_NO_HOLE)
            elif cmd == C.CMD_BLOCK_STATUS:
                out.append(contexts.reply(self.statuses, flags, cookie, off, length))
                st.took(cmd, perf_counter() - t0)
                return
            # CACHE: the page cache already holds what was read; nothing to do.
        except Exception as e:
            self._storage_error(out, cookie, e)
            st.took(cmd, perf_counter() - t0)
            return
        self._done(out, cmd, flags, cookie, t0)

    def _track(self, n: int, nbytes: int) -> None:
        self.inflight += n
        self.inflight_bytes += nbytes

    def _in_worker(self, run, then) -> None:
        """``run()`` in a worker thread, then ``then(its exception or None)`` on the loop."""
        fut = asyncio.get_running_loop().run_in_executor(self.server.io, run)
        fut.add_done_callback(lambda f: then(f.exception()))

    def _finish(self, out, cmd, flags, cookie, exc, t0: float) -> None:
        if exc is not None:
            self._storage_error(out, cookie, exc)
            self.stats.took(cmd, perf_counter() - t0)
        else:
            self._done(out, cmd, flags, cookie, t0)

    def _done(self, out, cmd, flags, cookie, t0: float) -> None:
        if flags & C.CMD_FLAG_FUA and cmd in wire.WRITES:
            self._after_commit(wire.simple(cookie), cmd, t0)
        else:
            out.append(wire.simple(cookie))
            self.stats.took(cmd, perf_counter() - t0)

    def _storage_error(self, out, cookie, exc) -> None:
        err = nbd_errno(exc)
        self.stats.error(err)
        if err == C.EIO and not hasattr(exc, "message"):
            log.error("connection %s: unexpected error", self.peer, exc_info=exc)
        out.append(wire.error_reply(cookie, err, str(exc)[:200], self.structured))

    def _after_commit(self, reply: bytes, cmd: int, t0: float) -> None:
        self.waiting += 1
        self.server.committer.request(self, (reply, cmd, t0))

    def committed(self, parked: tuple, err: BaseException | None) -> None:
        """Called by the group committer once per parked (reply, command, perf_counter()
        the request arrived)."""
        self.waiting -= 1
        if self.closed:
            return
        reply, cmd, t0 = parked
        if err is not None:
            cookie = int.from_bytes(reply[8:16], "big")
            e = nbd_errno(err)
            self.stats.error(e)
            reply = wire.error_reply(cookie, e, str(err)[:200], self.structured)
        self.stats.took(cmd, perf_counter() - t0)
        self._deliver([reply])
        if self.disconnecting:
            self._close_when_answered()

    def abort(self, why: str) -> None:
        if self.transport is not None and not self.closed:
            self.why = self.why or why
            self.transport.abort()

    def shutdown(self, why: str) -> None:
        """Graceful stop: stop reading, close once parked replies are out."""
        if self.closed:
            return
        self.why = self.why or why
        self.disconnecting = True
        if self.reader is None:
            self.transport.close()
        else:
            self._close_when_answered()

    def ended(self, exc: BaseException | None) -> None:
        """The one line a closed connection leaves in the log."""
        if self.closed:
            return
        why = self.why
        if why is None:
            why = f"connection error: {exc}" if exc is not None else \
                "client closed the connection without NBD_CMD_DISC"
        export = self.export.name if self.export is not None else "-"
        log.info("NBD connection %s export %s closed: %s", self.peer, export or "''", why)

