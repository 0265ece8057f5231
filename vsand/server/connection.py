"""One NBD client connection on asyncio (a BufferedProtocol).

Every complete request in a receive buffer is handled in one pass and the
replies go out with one ``writelines``. Storage calls are synchronous (page-cache
I/O); FLUSH and FUA replies wait for the server's group commit, which makes one
commit serve every connection waiting at that moment. A client that disappears
only ever loses its own connection: every write checks ``closed`` first.
"""

from __future__ import annotations

import asyncio
import logging

from ..nbd import constants as C
from ..nbd import wire
from ..nbd.handshake import Closed, Handshake, Negotiated

log = logging.getLogger("vsand.server")
HANDSHAKE_TIMEOUT = 60.0
WRITE_HIGH = 16 << 20   # a booting guest may leave the greeting unread for seconds


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
        self.hs = Handshake(server.lookup_export, server.list_exports, lambda: server.stopping)
        self._hsbuf = bytearray(65536)
        self.reader: wire.RequestReader | None = None
        self.dev = None
        self.export = None
        self.tflags = 0
        self.structured = False
        self.meta: dict[int, str] = {}
        self.waiting = 0          # replies parked for a commit
        self.disconnecting = False
        self._timer = None
        self.peer = "?"

    # ---- asyncio callbacks ---------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        self.peer = str(transport.get_extra_info("peername") or "unix")
        self.server.connections.add(self)
        # Backpressure stops reading requests when this much reply data is queued:
        # high enough for a deep queue of large reads, bounded per connection.
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_HIGH // 4)
        transport.write(Handshake.greeting())
        self._timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._timeout)

    def connection_lost(self, exc):
        self.closed = True
        self.server.connections.discard(self)
        if self._timer:
            self._timer.cancel()

    def pause_writing(self):
        self.transport.pause_reading()    # backpressure: stop taking requests

    def resume_writing(self):
        if not self.closed:
            self.transport.resume_reading()

    def eof_received(self):
        return False

    def get_buffer(self, sizehint):
        if self.reader is not None:
            return self.reader.get_buffer(sizehint)
        return memoryview(self._hsbuf)

    def buffer_updated(self, nbytes):
        try:
            if self.reader is None:
                self._handshake(bytes(self._hsbuf[:nbytes]))
            else:
                self.reader.buffer_updated(nbytes)
                self._process()
        except Exception:   # never let one client's bytes take the daemon down
            log.exception("connection %s: internal error, closing", self.peer)
            self.abort()

    # ---- handshake -----------------------------------------------------------------
    def _timeout(self):
        if self.reader is None and not self.closed:
            log.info("connection %s: handshake timed out", self.peer)
            self.abort()

    def _handshake(self, data: bytes) -> None:
        out, outcome = self.hs.receive(data)
        if out:
            self.transport.write(out)
        if isinstance(outcome, Closed):
            log.debug("connection %s: %s", self.peer, outcome.reason)
            self.transport.close()     # sends what is buffered first
        elif isinstance(outcome, Negotiated):
            self._timer.cancel()
            self.export = outcome.export
            self.dev = self.server.device(outcome.export.name)
            self.tflags = outcome.flags
            self.structured = outcome.structured
            self.meta = outcome.meta_contexts
            self.reader = wire.RequestReader()
            if outcome.leftover:
                self.reader.feed(outcome.leftover)
                self._process()

    # ---- transmission --------------------------------------------------------------
    def _process(self) -> None:
        out: list = []
        try:
            for req in self.reader.requests():
                if self.disconnecting:
                    break
                self._request(out, *req)
        except wire.ProtocolError as e:
            log.info("connection %s: %s; closing", self.peer, e)
            if out:
                self.transport.writelines(out)
            self.abort()
            return
        if out and not self.closed:
            self.transport.writelines(out)
        if self.disconnecting and not self.waiting:
            self.transport.close()

    def _request(self, out, cmd, flags, cookie, off, length, payload) -> None:
        self.server.requests += 1       # background tasks pace themselves by this
        dev = self.dev
        err, msg = wire.check(cmd, flags, off, length, dev.size, self.tflags, bool(self.meta))
        if not err and cmd == C.CMD_BLOCK_STATUS and off + max(length, 1) > dev.size:
            err, msg = C.EINVAL, "block status beyond the end of the export"
        if cmd == C.CMD_DISC and not err:
            self.disconnecting = True       # DISC gets no reply
            return
        if err:
            out.append(wire.error_reply(cookie, err, msg, self.structured))
            return
        try:
            if cmd == C.CMD_READ:
                self._read(out, flags, cookie, off, length)
                return
            if cmd == C.CMD_WRITE:
                dev.write(off, payload)
            elif cmd == C.CMD_FLUSH:
                self._after_commit(wire.simple(cookie))
                return
            elif cmd == C.CMD_TRIM:
                dev.trim(off, length)
            elif cmd == C.CMD_WRITE_ZEROES:
                dev.write_zeroes(off, length, not flags & C.CMD_FLAG_NO_HOLE)
            elif cmd == C.CMD_BLOCK_STATUS:
                out.append(self._block_status(flags, cookie, off, length))
                return
            # CACHE: the page cache already holds what was read; nothing to do.
        except Exception as e:
            self._storage_error(out, cookie, e)
            return
        if flags & C.CMD_FLAG_FUA and cmd in wire.WRITES:
            self._after_commit(wire.simple(cookie))
        else:
            out.append(wire.simple(cookie))

    def _read(self, out, flags, cookie, off, length) -> None:
        dev = self.dev
        if not self.structured:
            data = dev.read(off, length)      # errors raise before any header is queued
            out.append(wire.simple(cookie))
            out.append(data)
            return
        if flags & C.CMD_FLAG_DF or length == 0:
            data = dev.read(off, length) if length else b""
            if not length:
                out.append(wire.done_chunk(cookie))
                return
            out.append(wire.data_chunk_head(cookie, off, length))
            out.append(data)
            return
        pieces = dev.read_sparse(off, length)
        last = len(pieces) - 1
        for i, (o, n, data) in enumerate(pieces):
            if data is None:
                out.append(wire.hole_chunk(cookie, o, n, i == last))
            else:
                out.append(wire.data_chunk_head(cookie, o, n, i == last))
                out.append(data)

    def _block_status(self, flags, cookie, off, length) -> bytes:
        extents = [(n, 0 if alloc else C.STATE_HOLE | C.STATE_ZERO)
                   for n, alloc in self.dev.extents(off, max(length, 1))]
        if flags & C.CMD_FLAG_REQ_ONE:
            n, f = extents[0]
            extents = [(min(n, length) or 1, f)]
        ids = sorted(self.meta)
        return b"".join(wire.block_status_chunk(cookie, cid, extents, i == len(ids) - 1)
                        for i, cid in enumerate(ids))

    def _storage_error(self, out, cookie, exc) -> None:
        err = nbd_errno(exc)
        if err == C.EIO and not hasattr(exc, "message"):
            log.exception("connection %s: unexpected error", self.peer)
        out.append(wire.error_reply(cookie, err, str(exc)[:200], self.structured))

    def _after_commit(self, reply: bytes) -> None:
        self.waiting += 1
        self.server.committer.request(self, reply)

    def committed(self, reply: bytes, err: BaseException | None) -> None:
        """Called by the group committer once per parked reply."""
        self.waiting -= 1
        if self.closed:
            return
        if err is not None:
            cookie = int.from_bytes(reply[8:16], "big")
            reply = wire.error_reply(cookie, nbd_errno(err), str(err)[:200], self.structured)
        self.transport.write(reply)
        if self.disconnecting and not self.waiting:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def shutdown(self) -> None:
        """Graceful stop: stop reading, close once parked replies are out."""
        if self.closed:
            return
        self.disconnecting = True
        if self.reader is None or not self.waiting:
            self.transport.close()
