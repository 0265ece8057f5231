"""Transmission phase, sans-IO: request framing in, reply framing out.

``RequestReader`` owns the receive buffer so that an asyncio BufferedProtocol can
``recv_into`` it directly; WRITE payloads are handed out as memoryviews into that
buffer (valid until the next ``get_buffer``), so payload bytes are never copied
before they reach storage.

Memory follows what is in flight, not what a client announces: an idle reader
keeps a small buffer, and a WRITE payload larger than ``PIECE`` is handed out in
pieces of at most ``PIECE`` bytes as they arrive (the first as ``CMD_WRITE``, the
rest as ``WRITE_CONT`` items carrying the request's offset and length), so a
header promising 64 MiB followed by one byte costs one piece, not 64 MiB. The
owner may make pieces smaller still (``room``): the server does when its memory
budget is spent.
"""

from __future__ import annotations

import struct

from . import constants as C

REQ = struct.Struct(">IHHQQI")        # magic, flags, type, cookie, offset, length
SIMPLE = struct.Struct(">IIQ")        # magic, error, cookie
CHUNK = struct.Struct(">IHHQI")       # magic, flags, type, cookie, payload length
assert REQ.size == 28 and SIMPLE.size == 16 and CHUNK.size == 20

SMALL = 64 << 10        # an idle connection's receive buffer
PIECE = 4 << 20         # WRITE payloads beyond this arrive in pieces
_ROOM = 16 << 10        # free room below which the buffer is renewed before a recv
MIN_PIECE = SMALL - _ROOM - 28   # what a small buffer holds: pieces never need less
WRITE_CONT = 0x10000    # not a u16: an item that continues the current WRITE


class ProtocolError(Exception):
    """The byte stream cannot be framed any more: close the connection."""


class RequestReader:
    def __init__(self, max_payload: int = C.MAX_ACCEPTED, room=None):
        """``room(n, held)``: how many bytes of payload a WRITE piece may have when
        the buffer must grow for ``n`` of them (``held``: what the buffer holds
        beyond a small one, given back by growing); None: always ``n``."""
        self.max_payload = max_payload
        self.room = room
        self.piece = PIECE  # payload bytes per piece of the current WRITE
        self.wpiece = 0     # the same for the WRITE whose header waits for its payload
        self.buf = bytearray(SMALL)
        self.start = 0
        self.end = 0
        self.skip = 0      # bytes of a WRITE payload still to discard
        self.left = 0      # bytes of the current WRITE payload still to hand out
        self.cur = None    # (flags, cookie, offset, length) of that WRITE
        self.busy = False  # something arrived since the last trim()

    # -- filling ---------------------------------------------------------------------
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        if self.start == self.end:
            self.start = self.end = 0
        elif len(self.buf) - self.end < _ROOM:
            self._renew(len(self.buf))
        return memoryview(self.buf)[self.end:]

    def buffer_updated(self, n: int) -> None:
        self.end += n
        self.busy = True

    def feed(self, data: bytes) -> None:
        while data:
            mv = self.get_buffer()
            k = min(len(mv), len(data))
            mv[:k] = data[:k]
            self.buffer_updated(k)
            data = data[k:]

    def pending(self) -> int:
        return self.end - self.start

    def trim(self) -> None:
        """Gives a grown buffer back once nothing arrived since the last call and
        nothing is buffered (called from a timer: a busy connection keeps its size)."""
        if not self.busy and self.start == self.end and len(self.buf) > SMALL:
            self.buf, self.start, self.end = bytearray(SMALL), 0, 0
        self.busy = False

    def extra(self) -> int:
        """Bytes of buffer beyond an idle reader's."""
        return len(self.buf) - SMALL if len(self.buf) > SMALL else 0

    def shrink(self) -> bool:
        """Gives a grown buffer back now, if what it holds fits a small one and no
        WRITE piece is under way (its next piece would grow it again)."""
        if len(self.buf) <= SMALL or self.left or self.end - self.start + _ROOM > SMALL:
            return False
        self._renew(SMALL)
        self.wpiece = 0
        return True

    def _renew(self, size: int) -> None:
        # A new buffer, never a resize: a memoryview handed out may still be in use.
        n = self.end - self.start
        nb = bytearray(max(size, n + _ROOM))
        nb[:n] = self.buf[self.start:self.end]
        self.buf, self.end, self.start = nb, n, 0

    def discard_write(self) -> None:
        """The rest of the current WRITE payload is thrown away as it arrives."""
        self.skip += self.left
        self.left, self.cur = 0, None

    # -- framing -------------------------------------------------------------------
    def requests(self):
        """Yields (cmd, flags, cookie, offset, length, payload) for each complete
        request, or piece of one. ``payload`` is a memoryview for WRITE and
        WRITE_CONT, None otherwise (and None for a WRITE whose payload is over the
        limit: it is discarded as it arrives)."""
        unpack = REQ.unpack_from
        while True:
            if self.skip:
                k = min(self.skip, self.end - self.start)
                self.start += k
                self.skip -= k
                if self.skip:
                    return
            if self.left:
                item = self._piece(WRITE_CONT)
                if item is None:
                    return
                yield item
                continue
            if self.end - self.start < 28:
                return
            magic, flags, cmd, cookie, offset, length = unpack(self.buf, self.start)
            if magic != C.REQUEST_MAGIC:
                raise ProtocolError(f"bad request magic {magic:#x}")
            if cmd != C.CMD_WRITE:
                self.start += 28
                yield cmd, flags, cookie, offset, length, None
                continue
            if length > self.max_payload:
                self.start += 28
                self.skip = length
                yield cmd, flags, cookie, offset, length, None
                continue
            if not self.wpiece:
                self.wpiece = self._fit(min(length, PIECE))
            need = 28 + self.wpiece
            if self.end - self.start < need:
                if len(self.buf) - self.start < need:
                    self._renew(need + _ROOM)
                return
            self.start += 28
            self.piece, self.wpiece = self.wpiece, 0
            self.left, self.cur = length, (flags, cookie, offset, length)
            yield self._piece(C.CMD_WRITE)

    def _fit(self, n: int) -> int:
        """Payload bytes per piece for a WRITE with ``n`` of them to come (n <= PIECE):
        all when the buffer already holds them, else what ``room`` allows."""
        if self.room is None or 28 + n + _ROOM <= len(self.buf) or n <= MIN_PIECE:
            return n
        return max(min(self.room(n, self.extra()), n), MIN_PIECE)

    def _piece(self, cmd: int):
        """The next piece of the current WRITE payload, or None until enough of it
        arrived: all that is left when it fits in one piece, else ``piece`` bytes."""
        want = min(self.left, self.piece)
        if self.end - self.start < want:
            if len(self.buf) - self.start < want:
                self._renew(want + _ROOM)
            return None
        p = self.start
        self.start += want
        self.left -= want
        flags, cookie, offset, length = self.cur
        if not self.left:
            self.cur = None
        return cmd, flags, cookie, offset, length, memoryview(self.buf)[p:p + want]


# ---- request validation (protocol rules only; storage errors come later) ----------
ALLOWED_FLAGS = {
    C.CMD_READ: C.CMD_FLAG_FUA | C.CMD_FLAG_DF,
    C.CMD_WRITE: C.CMD_FLAG_FUA,
    C.CMD_DISC: C.CMD_FLAG_FUA,
    C.CMD_FLUSH: C.CMD_FLAG_FUA,
    C.CMD_TRIM: C.CMD_FLAG_FUA,
    C.CMD_CACHE: C.CMD_FLAG_FUA,
    C.CMD_WRITE_ZEROES: C.CMD_FLAG_FUA | C.CMD_FLAG_NO_HOLE | C.CMD_FLAG_FAST_ZERO,
    C.CMD_BLOCK_STATUS: C.CMD_FLAG_FUA | C.CMD_FLAG_REQ_ONE,
}
WRITES = (C.CMD_WRITE, C.CMD_TRIM, C.CMD_WRITE_ZEROES)


def check(cmd: int, flags: int, offset: int, length: int, size: int, tflags: int,
          has_meta: bool) -> tuple[int, str]:
    """(errno, message) for a request that breaks the protocol's rules, (0, "") if fine."""
    allowed = ALLOWED_FLAGS.get(cmd)
    if allowed is None:
        return C.EINVAL, f"unknown command {cmd}"
    if flags & ~allowed:
        return C.EINVAL, f"flags {flags:#x} not valid for command {cmd}"
    if flags & C.CMD_FLAG_DF and not tflags & C.FLAG_SEND_DF:
        return C.EINVAL, "DF needs structured replies"
    if cmd in WRITES and tflags & C.FLAG_READ_ONLY:
        return C.EPERM, "export is read-only"
    if cmd == C.CMD_BLOCK_STATUS and not has_meta:
        return C.EINVAL, "no meta context was negotiated"
    if cmd in (C.CMD_FLUSH, C.CMD_DISC):
        return 0, ""
    if offset + length > size:
        err = C.ENOSPC if cmd in (C.CMD_WRITE, C.CMD_WRITE_ZEROES) else C.EINVAL
        return err, f"request {offset}+{length} is beyond the export size {size}"
    if cmd == C.CMD_READ and length > C.MAX_ACCEPTED:
        return (C.EOVERFLOW if flags & C.CMD_FLAG_DF else C.EINVAL), f"read of {length} bytes is too large"
    if cmd == C.CMD_WRITE and length > C.MAX_ACCEPTED:
        return C.EINVAL, f"write of {length} bytes is too large"
    return 0, ""


# ---- replies -------------------------------------------------------------------------
def simple(cookie: int, err: int = 0) -> bytes:
    return SIMPLE.pack(C.SIMPLE_REPLY_MAGIC, err, cookie)


def chunk(cookie: int, ctype: int, payload_len: int, done: bool = True) -> bytes:
    return CHUNK.pack(C.STRUCTURED_REPLY_MAGIC, C.REPLY_FLAG_DONE if done else 0, ctype,
                      cookie, payload_len)


def data_chunk_head(cookie: int, offset: int, n: int, done: bool = True) -> bytes:
    """Header of an OFFSET_DATA chunk; ``n`` data bytes follow it."""
    return chunk(cookie, C.REPLY_TYPE_OFFSET_DATA, 8 + n, done) + struct.pack(">Q", offset)


def hole_chunk(cookie: int, offset: int, n: int, done: bool = True) -> bytes:
    return chunk(cookie, C.REPLY_TYPE_OFFSET_HOLE, 12, done) + struct.pack(">QI", offset, n)


def error_chunk(cookie: int, err: int, msg: str = "") -> bytes:
    m = msg.encode()[: C.MAX_STRING].decode(errors="ignore").encode()   # whole characters only
    return chunk(cookie, C.REPLY_TYPE_ERROR, 6 + len(m)) + struct.pack(">IH", err, len(m)) + m


def done_chunk(cookie: int) -> bytes:
    return chunk(cookie, C.REPLY_TYPE_NONE, 0)


def block_status_chunk(cookie: int, ctx_id: int, extents: list[tuple[int, int]],
                       done: bool = True) -> bytes:
    body = struct.pack(">I", ctx_id) + b"".join(struct.pack(">II", n, f) for n, f in extents)
    return chunk(cookie, C.REPLY_TYPE_BLOCK_STATUS, len(body), done) + body


def error_reply(cookie: int, err: int, msg: str, structured: bool) -> bytes:
    """An error answer in the form the connection negotiated (structured replies
    must be used for every READ once negotiated; using them for all is allowed)."""
    return error_chunk(cookie, err, msg) if structured else simple(cookie, err)
