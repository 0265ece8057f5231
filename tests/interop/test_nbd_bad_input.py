"""Bad input against the REAL daemon over raw sockets (UNIX and TCP).

Every scenario ends by checking that the daemon process is alive, that its log has
no traceback, and that a fresh client still writes a pattern and reads it back over
a new connection (NBD-NOTES §1.8, G-1, G-2, G-4, G-8, G-9, G-15)."""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time

import pytest

from vsand.nbd import constants as C

LUN = "badin"
LUN_SIZE = 256 << 20
MiB = 1 << 20
TRANSPORTS = ["unix", "tcp"]
OPT_REPLY_MAGIC = 0x3E889045565A9


# ---- a tiny raw NBD client -------------------------------------------------------------------
class Conn:
    def __init__(self, daemon, transport: str = "unix", timeout: float = 10.0, source: str | None = None,
                 host: str = "127.0.0.1"):
        """``source``: the TCP client's own address (any of 127.0.0.0/8 works on Linux);
        ``host``: the daemon's (``::1`` when it listens there)."""
        if transport == "unix":
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.s.settimeout(timeout)
            self.s.connect(daemon.sock)
        else:
            self.s = socket.create_connection((host, daemon.port), timeout=timeout,
                                              source_address=(source, 0) if source else None)
            self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport
        self.size = self.flags = 0
        self.structured = False
        self.cookie = 0

    # bytes
    def send(self, b: bytes) -> None:
        self.s.sendall(b)

    def recvn(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            got = self.s.recv(min(n - len(buf), 4 << 20))
            if not got:
                raise EOFError(f"EOF after {len(buf)} of {n} bytes")
            buf += got
        return bytes(buf)

    def closed_by_server(self, timeout: float = 10.0) -> bool:
        """True once the server has closed (EOF or reset); unread data is discarded."""
        self.s.settimeout(timeout)
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self, rst: bool = False) -> None:
        if rst:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.s.close()

    # handshake
    def greeting(self) -> None:
        magic, opt, hflags = struct.unpack(">QQH", self.recvn(18))
        assert (magic, opt) == (C.NBDMAGIC, C.IHAVEOPT)
        assert hflags == C.FLAG_FIXED_NEWSTYLE | C.FLAG_NO_ZEROES

    def option(self, o: int, data: bytes = b"") -> None:
        self.send(struct.pack(">QII", C.IHAVEOPT, o, len(data)) + data)

    def opt_reply(self, o: int) -> tuple[int, bytes]:
        magic, ro, rtype, n = struct.unpack(">QIII", self.recvn(20))
        assert magic == OPT_REPLY_MAGIC and ro == o, (hex(magic), ro, o)
        return rtype, self.recvn(n)

    def opt_final(self, o: int) -> list[tuple[int, bytes]]:
        got = []
        while True:
            t, d = self.opt_reply(o)
            got.append((t, d))
            if t == C.REP_ACK or t & C.REP_ERR:
                return got

    def negotiate(self, name: str = LUN, structured: bool = False, meta: bool = False) -> "Conn":
        self.greeting()
        self.send(struct.pack(">I", C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES))
        if structured:
            self.option(C.OPT_STRUCTURED_REPLY)
            assert self.opt_final(C.OPT_STRUCTURED_REPLY) == [(C.REP_ACK, b"")]
            self.structured = True
        nb = name.encode()
        if meta:
            q = b"base:allocation"
            self.option(C.OPT_SET_META_CONTEXT, struct.pack(">I", len(nb)) + nb + struct.pack(">II", 1, len(q)) + q)
            got = self.opt_final(C.OPT_SET_META_CONTEXT)
            assert [t for t, _ in got] == [C.REP_META_CONTEXT, C.REP_ACK]
        self.option(C.OPT_GO, struct.pack(">I", len(nb)) + nb + b"\x00\x00")
        got = self.opt_final(C.OPT_GO)
        assert got[-1] == (C.REP_ACK, b""), got
        info = [d for t, d in got if t == C.REP_INFO and d[:2] == b"\x00\x00"]
        _, self.size, self.flags = struct.unpack(">HQH", info[0])
        assert bool(self.flags & C.FLAG_SEND_DF) == structured
        return self

    # transmission
    def request(self, cmd: int, off: int = 0, length: int = 0, flags: int = 0,
                payload: bytes = b"", cookie: int | None = None) -> int:
        if cookie is None:
            self.cookie += 1
            cookie = self.cookie
        self.send(struct.pack(">IHHQQI", C.REQUEST_MAGIC, flags, cmd, cookie, off, length) + payload)
        return cookie

    def simple_reply(self) -> tuple[int, int]:
        magic, err, cookie = struct.unpack(">IIQ", self.recvn(16))
        assert magic == C.SIMPLE_REPLY_MAGIC, hex(magic)
        return err, cookie

    def chunk(self) -> tuple[int, int, int, bytes]:
        magic, flags, ctype, cookie, n = struct.unpack(">IHHQI", self.recvn(20))
        assert magic == C.STRUCTURED_REPLY_MAGIC, hex(magic)
        return flags, ctype, cookie, self.recvn(n)

    def reply_errno(self, cookie: int) -> int:
        """errno of a reply to a request with no reply payload (either reply form)."""
        magic = struct.unpack(">I", self.recvn(4))[0]
        if magic == C.SIMPLE_REPLY_MAGIC:
            err, ck = struct.unpack(">IQ", self.recvn(12))
            assert ck == cookie
            return err
        assert magic == C.STRUCTURED_REPLY_MAGIC and self.structured, hex(magic)
        flags, ctype, ck, n = struct.unpack(">HHQI", self.recvn(16))
        body = self.recvn(n)
        assert ck == cookie and flags & C.REPLY_FLAG_DONE
        if ctype == C.REPLY_TYPE_NONE:
            return 0
        assert ctype == C.REPLY_TYPE_ERROR, ctype
        err, mlen = struct.unpack_from(">IH", body)
        assert n == 6 + mlen and err != 0
        return err

    def read(self, off: int, n: int) -> bytes:
        ck = self.request(C.CMD_READ, off, n)
        if not self.structured:
            err, cookie = self.simple_reply()
            assert (err, cookie) == (0, ck)
            return self.recvn(n)
        buf = bytearray(n)
        while True:
            flags, ctype, cookie, body = self.chunk()
            assert cookie == ck
            if ctype == C.REPLY_TYPE_OFFSET_DATA:
                (o,) = struct.unpack_from(">Q", body)
                buf[o - off:o - off + len(body) - 8] = body[8:]
            elif ctype == C.REPLY_TYPE_OFFSET_HOLE:
                o, m = struct.unpack(">QI", body)
                buf[o - off:o - off + m] = bytes(m)
            else:
                assert ctype == C.REPLY_TYPE_NONE, (ctype, body)
            if flags & C.REPLY_FLAG_DONE:
                return bytes(buf)

    def write(self, off: int, data: bytes, flags: int = 0) -> None:
        ck = self.request(C.CMD_WRITE, off, len(data), flags, data)
        assert self.reply_errno(ck) == 0


# ---- fixtures and the after-every-scenario check ----------------------------------------------
@pytest.fixture(scope="module")
def d(daemon):
    daemon.ctl("lun.create", name=LUN, size=LUN_SIZE, raid=5)
    return daemon


_rng = random.Random(1234)


def healthy(daemon) -> None:
    """The daemon lives, logged no traceback, and serves fresh clients correctly."""
    # Every client so far has closed: wait until the daemon is done with them all (a
    # crash or traceback from their bytes happens by then), not for a fixed time.
    deadline = time.monotonic() + 30
    while daemon.alive() and daemon.ctl("status")["connections"]:
        assert time.monotonic() < deadline, daemon.ctl("status")
        time.sleep(0.05)
    assert daemon.alive(), daemon.read_log()
    log = daemon.read_log()
    assert "Traceback" not in log and "internal error" not in log, log
    for transport in TRANSPORTS:
        off = _rng.randrange(0, LUN_SIZE - 3 * 4096) & ~511
        data = os.urandom(_rng.choice([512, 4096, 3 * 4096 + 17]))
        c = Conn(daemon, transport).negotiate()
        c.write(off, data, C.CMD_FLAG_FUA)
        c.request(C.CMD_DISC)
        assert c.closed_by_server()
        c2 = Conn(daemon, transport).negotiate(structured=transport == "tcp")
        assert c2.read(off, len(data)) == data
        c2.close()


def greeted(daemon, transport) -> Conn:
    c = Conn(daemon, transport)
    c.greeting()
    return c


def started(daemon, transport) -> Conn:
    c = greeted(daemon, transport)
    c.send(struct.pack(">I", 3))
    return c


# ---- malformed handshakes ----------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_garbage_handshake(d, transport):
    c = greeted(d, transport)
    try:
        c.send(b"\xff" * 4 + os.urandom(4096))       # unknown client flag bits
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert c.closed_by_server()
    c = greeted(d, transport)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.closed_by_server()
    # garbage sent before even reading the greeting
    c = Conn(d, transport)
    try:
        c.send(os.urandom(100_000))
    except (BrokenPipeError, ConnectionResetError):
        pass                                          # the server may reset us first
    assert c.closed_by_server()
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("cflags", [4, 1 << 31, 0xFFFFFFFC, 0xFFFFFFFF])
def test_unknown_client_flags(d, transport, cflags):
    c = greeted(d, transport)
    c.send(struct.pack(">I", cflags))
    c.s.settimeout(10)
    assert c.s.recv(1) == b""           # nothing at all, just closed
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_truncated_handshakes(d, transport):
    for partial in (b"", b"\x00\x00", struct.pack(">I", 3) + b"IHAVE",
                    struct.pack(">I", 3) + struct.pack(">QI", C.IHAVEOPT, C.OPT_GO),
                    struct.pack(">I", 3) + struct.pack(">QII", C.IHAVEOPT, C.OPT_GO, 12) + b"\x00\x00"):
        for rst in (False, True):
            c = greeted(d, transport)
            if partial:
                c.send(partial)
            c.close(rst=rst)
    # and one that never reads the greeting
    c = Conn(d, transport)
    c.close(rst=True)
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_option_magic(d, transport):
    c = started(d, transport)
    c.send(struct.pack(">QII", 0x1122334455667788, C.OPT_LIST, 0))
    assert c.closed_by_server()
    # after a good option
    c = started(d, transport)
    c.option(C.OPT_STRUCTURED_REPLY)
    c.send(struct.pack(">QII", C.NBDMAGIC, C.OPT_GO, 0))
    assert c.opt_final(C.OPT_STRUCTURED_REPLY) == [(C.REP_ACK, b"")]
    assert c.closed_by_server()
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_huge_option_length(d, transport):
    c = started(d, transport)
    c.send(struct.pack(">QII", C.IHAVEOPT, C.OPT_GO, 0xFFFFFFFF) + b"\x00" * 1000)
    assert c.closed_by_server(timeout=10)       # dropped, not buffered up to 4 GiB
    c = started(d, transport)
    c.send(struct.pack(">QII", C.IHAVEOPT, 77, 8 << 20))
    try:
        c.send(b"\x00" * (2 << 20))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert c.closed_by_server(timeout=10)
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("rst", [False, True])
def test_client_disconnects_mid_option(d, transport, rst):
    for o in (C.OPT_LIST, C.OPT_GO, C.OPT_SET_META_CONTEXT, 1234):
        c = started(d, transport)
        c.send(struct.pack(">QII", C.IHAVEOPT, o, 100) + b"\x00" * 10)
        time.sleep(0.01)
        c.close(rst=rst)
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_options_then_io(d, transport):
    c = started(d, transport)
    for o, data in ((C.OPT_EXTENDED_HEADERS, b""), (C.OPT_PEEK_EXPORT, b""), (0, b"x"),
                    (99, os.urandom(70000)), (0xFFFFFFFF, b""), (C.OPT_STARTTLS, b"")):
        c.option(o, data)
        [(t, msg)] = c.opt_final(o)
        assert t == (C.REP_ERR_POLICY if o == C.OPT_STARTTLS else C.REP_ERR_UNSUP), (o, hex(t))
    # malformed known options: ERR_INVALID, still in sync
    c.option(C.OPT_LIST, b"junk")
    assert [t for t, _ in c.opt_final(C.OPT_LIST)] == [C.REP_ERR_INVALID]
    c.option(C.OPT_GO, struct.pack(">I", 1000) + b"ab\x00\x00")
    assert [t for t, _ in c.opt_final(C.OPT_GO)] == [C.REP_ERR_INVALID]
    c.option(C.OPT_INFO, struct.pack(">I", 6) + b"nosuch\x00\x00")
    assert [t for t, _ in c.opt_final(C.OPT_INFO)] == [C.REP_ERR_UNKNOWN]
    c.option(C.OPT_LIST)
    got = c.opt_final(C.OPT_LIST)
    assert got[-1] == (C.REP_ACK, b"")
    names = []
    for t, data in got[:-1]:
        assert t == C.REP_SERVER
        (n,) = struct.unpack_from(">I", data)
        assert 4 + n <= len(data)
        names.append(data[4:4 + n].decode())
    assert LUN in names
    nb = LUN.encode()
    c.option(C.OPT_GO, struct.pack(">I", len(nb)) + nb + b"\x00\x00")
    assert c.opt_final(C.OPT_GO)[-1] == (C.REP_ACK, b"")
    c.write(8192, b"after options")
    assert c.read(8192, 13) == b"after options"
    c.close()
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_export_name_unknown_and_abort(d, transport):
    c = started(d, transport)
    c.option(C.OPT_EXPORT_NAME, b"no-such-lun")
    c.s.settimeout(10)
    assert c.s.recv(1) == b""                   # closed without any reply
    # ABORT: ACK then close; also a client that never reads the ACK
    c = started(d, transport)
    c.option(C.OPT_ABORT, b"ignored")
    assert c.opt_final(C.OPT_ABORT) == [(C.REP_ACK, b"")]
    assert c.closed_by_server()
    for rst in (False, True):
        c = started(d, transport)
        c.option(C.OPT_LIST)
        c.option(C.OPT_ABORT)
        c.close(rst=rst)
    healthy(d)


# ---- transmission-phase bad input ------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_commands_and_flags(d, transport):
    c = Conn(d, transport).negotiate()
    for cmd in (8, 9, 100, 0xFFFF):
        ck = c.request(cmd, 0, 4096)
        assert c.reply_errno(ck) == C.EINVAL
    for cmd, flags in ((C.CMD_READ, 1 << 7), (C.CMD_READ, C.CMD_FLAG_NO_HOLE),
                       (C.CMD_READ, C.CMD_FLAG_DF),                      # DF without structured
                       (C.CMD_FLUSH, C.CMD_FLAG_REQ_ONE), (C.CMD_TRIM, C.CMD_FLAG_FAST_ZERO),
                       (C.CMD_CACHE, C.CMD_FLAG_NO_HOLE), (C.CMD_WRITE_ZEROES, C.CMD_FLAG_DF),
                       (C.CMD_BLOCK_STATUS, 0), (C.CMD_READ, 0xFFFF)):
        ck = c.request(cmd, 0, 4096, flags)
        assert c.reply_errno(ck) == C.EINVAL, (cmd, flags)
    # a rejected WRITE's payload is still consumed
    marker = b"M" * 4096
    c.write(0, marker)
    ck = c.request(C.CMD_WRITE, 0, 4096, C.CMD_FLAG_NO_HOLE, b"\x25\x60\x95\x13" * 1024)
    assert c.reply_errno(ck) == C.EINVAL
    ck = c.request(C.CMD_WRITE, 0, 4096, 1 << 9, b"X" * 4096)
    assert c.reply_errno(ck) == C.EINVAL
    assert c.read(0, 4096) == marker                 # rejected writes changed nothing
    c.close()
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_out_of_range_requests(d, transport):
    c = Conn(d, transport).negotiate()
    size = c.size
    assert size == LUN_SIZE
    cases = [
        (C.CMD_READ, size - 511, 512, C.EINVAL, b""),
        (C.CMD_READ, size, 1, C.EINVAL, b""),
        (C.CMD_READ, (1 << 64) - 512, 512, C.EINVAL, b""),
        (C.CMD_TRIM, size - 4096, 8192, C.EINVAL, b""),
        (C.CMD_CACHE, size, 4096, C.EINVAL, b""),
        (C.CMD_WRITE, size - 100, 512, C.ENOSPC, b"W" * 512),
        (C.CMD_WRITE, (1 << 64) - 1, 1, C.ENOSPC, b"W"),
        (C.CMD_WRITE_ZEROES, size - 4096, 0xFFFFFFFF, C.ENOSPC, b""),
    ]
    for cmd, off, n, errno, payload in cases:
        ck = c.request(cmd, off, n, 0, payload)
        assert c.reply_errno(ck) == errno, (cmd, off, n)
    # pipelined: all answered, in any order
    cks = {c.request(cmd, off, n, 0, payload): errno for cmd, off, n, errno, payload in cases}
    got = {}
    for _ in cks:
        err, ck = c.simple_reply()
        got[ck] = err
    assert got == cks
    c.write(size - 512, b"E" * 512)                  # the very end is writable
    assert c.read(size - 512, 512) == b"E" * 512
    c.close()
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("structured", [False, True])
def test_zero_length_requests(d, transport, structured):
    c = Conn(d, transport).negotiate(structured=structured, meta=structured)
    for cmd in (C.CMD_READ, C.CMD_WRITE, C.CMD_TRIM, C.CMD_WRITE_ZEROES, C.CMD_CACHE,
                C.CMD_FLUSH) + ((C.CMD_BLOCK_STATUS,) if structured else ()):
        for off in (0, 4096, c.size):
            ck = c.request(cmd, off, 0)
            if cmd == C.CMD_BLOCK_STATUS:
                flags, ctype, cookie, body = c.chunk()
                assert cookie == ck and flags & C.REPLY_FLAG_DONE
                assert ctype in (C.REPLY_TYPE_BLOCK_STATUS, C.REPLY_TYPE_ERROR)
                continue
            err = c.reply_errno(ck)      # any answer is fine; READ 0 carries no data
            assert err in (0, C.EINVAL, C.ENOSPC), (cmd, off, err)
    c.write(0, b"still in sync")
    assert c.read(0, 13) == b"still in sync"
    c.close()
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_oversized_read(d, transport):
    c = Conn(d, transport, timeout=30).negotiate()
    ck = c.request(C.CMD_READ, 0, C.MAX_ACCEPTED + 4096)
    err, cookie = c.simple_reply()
    assert cookie == ck and err in (C.EINVAL, C.EOVERFLOW)
    ck = c.request(C.CMD_READ, 0, 0xFFFFFFFF)
    err, cookie = c.simple_reply()
    assert cookie == ck and err != 0
    # no data followed the error replies: the stream is still framed
    c.write(4096, b"after big read")
    assert c.read(4096, 14) == b"after big read"
    c.close()
    healthy(d)


def _send_in_thread(c: Conn, data_parts) -> threading.Thread:
    errors = []

    def run():
        try:
            for p in data_parts:
                c.send(p)
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.errors = errors
    t.start()
    return t


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_oversized_write_skipped(d, transport):
    c = Conn(d, transport, timeout=30).negotiate()
    c.write(0, b"K" * 4096)
    n = C.MAX_ACCEPTED + (1 << 20)                   # 65 MiB payload
    chunk = b"\x25\x60\x95\x13" * (1 << 18)          # 1 MiB of request-magic-looking bytes
    head = struct.pack(">IHHQQI", C.REQUEST_MAGIC, 0, C.CMD_WRITE, 4242, 0, n)
    t = _send_in_thread(c, [head] + [chunk] * (n // len(chunk)))
    err, cookie = c.simple_reply()
    assert cookie == 4242 and err in (C.EINVAL, C.EOVERFLOW, C.ENOSPC)
    t.join(30)
    assert not t.is_alive() and not t.errors
    # still usable, and the skipped payload wrote nothing
    assert c.read(0, 4096) == b"K" * 4096
    c.write(8192, b"after big write")
    assert c.read(8192, 15) == b"after big write"
    c.close()
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_request_magic_closes(d, transport):
    c = Conn(d, transport).negotiate()
    c.write(0, b"ok")
    c.send(struct.pack(">IHHQQI", 0x25609514, 0, C.CMD_READ, 1, 0, 512))
    assert c.closed_by_server()
    # garbage right after a write payload, in the same send
    c = Conn(d, transport).negotiate()
    c.send(struct.pack(">IHHQQI", C.REQUEST_MAGIC, 0, C.CMD_WRITE, 1, 0, 4) + b"abcd" + os.urandom(64))
    assert c.closed_by_server()
    # simple reply magic echoed back as a request
    c = Conn(d, transport).negotiate()
    c.send(struct.pack(">IIQ", C.SIMPLE_REPLY_MAGIC, 0, 1) + bytes(12))
    assert c.closed_by_server()
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_structured_read_errors_are_error_chunks(d, transport):
    c = Conn(d, transport).negotiate(structured=True)
    for off, n, flags, errno in ((c.size, 512, 0, C.EINVAL),            # out of range
                                 (0, 512, 1 << 8, C.EINVAL),           # bad flag: early EINVAL
                                 (0, C.MAX_ACCEPTED + 1, 0, C.EINVAL),
                                 (0, C.MAX_ACCEPTED + 1, C.CMD_FLAG_DF, C.EOVERFLOW)):
        ck = c.request(C.CMD_READ, off, n, flags)
        fl, ctype, cookie, body = c.chunk()
        assert cookie == ck and fl == C.REPLY_FLAG_DONE and ctype == C.REPLY_TYPE_ERROR
        err, mlen = struct.unpack_from(">IH", body)
        assert len(body) == 6 + mlen and mlen <= 4096
        assert err in (errno, C.EINVAL)
        body[6:].decode()
    # BLOCK_STATUS without a meta context: an error, and no disconnect
    ck = c.request(C.CMD_BLOCK_STATUS, 0, 4096)
    assert c.reply_errno(ck) == C.EINVAL
    base = 5 * MiB + (4096 if transport == "tcp" else 0)
    c.request(C.CMD_WRITE_ZEROES, base, 4096)
    assert c.reply_errno(c.cookie) == 0
    c.write(base, b"S" * 1000)
    assert c.read(base, 1000) == b"S" * 1000
    ck = c.request(C.CMD_READ, base, 4096, C.CMD_FLAG_DF)
    fl, ctype, cookie, body = c.chunk()
    assert (fl, ctype, cookie) == (C.REPLY_FLAG_DONE, C.REPLY_TYPE_OFFSET_DATA, ck)
    assert body[:8] == base.to_bytes(8, "big") and body[8:] == b"S" * 1000 + bytes(3096)
    c.close()
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_disc_and_eof(d, transport):
    c = Conn(d, transport).negotiate()
    ck = c.request(C.CMD_WRITE, 0, 3, C.CMD_FLAG_FUA, b"abc")
    c.request(C.CMD_DISC)
    assert c.reply_errno(ck) == 0
    c.s.settimeout(10)
    assert c.s.recv(100) == b""                      # no reply to DISC, then closed
    # EOF mid-request (header, then half a payload)
    c = Conn(d, transport).negotiate()
    c.send(struct.pack(">IHHQQI", C.REQUEST_MAGIC, 0, C.CMD_WRITE, 1, 0, 4096) + b"x" * 100)
    c.close()
    c = Conn(d, transport).negotiate()
    c.send(struct.pack(">IHHQQI", C.REQUEST_MAGIC, 0, C.CMD_READ, 1, 0, 4096)[:20])
    c.close(rst=True)
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_read_only_lun_rejects_writes(d, transport):
    w = Conn(d, transport).negotiate()
    w.write(12 * MiB, b"R" * 4096)
    d.ctl("lun.set", name=LUN, read_only=True)
    try:
        c = Conn(d, transport).negotiate()
        assert c.flags & C.FLAG_READ_ONLY
        for cmd, payload in ((C.CMD_WRITE, b"x" * 4096), (C.CMD_TRIM, b""), (C.CMD_WRITE_ZEROES, b"")):
            for flags in (0, C.CMD_FLAG_FUA):
                ck = c.request(cmd, 12 * MiB, 4096, flags, payload)
                assert c.reply_errno(ck) == C.EPERM, (cmd, flags)
        # a connection negotiated before the change must not write either
        ck = w.request(C.CMD_WRITE, 12 * MiB, 4096, 0, b"y" * 4096)
        assert w.reply_errno(ck) == C.EPERM
        assert c.read(12 * MiB, 4096) == b"R" * 4096
        ck = c.request(C.CMD_FLUSH)
        assert c.reply_errno(ck) == 0
        c.close()
    finally:
        d.ctl("lun.set", name=LUN, read_only=False)
    w.close()
    healthy(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_block_status_on_default_export_name(d, transport):
    """SET_META_CONTEXT and GO both naming the default export "" (how qemu and
    nbdinfo connect without an export name) must keep base:allocation."""
    assert [x["name"] for x in d.ctl("lun.list")] == [LUN]      # "" means this LUN
    c = Conn(d, transport).negotiate(name="", structured=True, meta=True)
    assert c.size == LUN_SIZE
    ck = c.request(C.CMD_BLOCK_STATUS, 0, 4 * MiB)
    flags, ctype, cookie, body = c.chunk()
    assert (flags, ctype, cookie) == (C.REPLY_FLAG_DONE, C.REPLY_TYPE_BLOCK_STATUS, ck), body
    ctx, = struct.unpack_from(">I", body)
    exts = [struct.unpack_from(">II", body, 4 + 8 * i) for i in range((len(body) - 4) // 8)]
    assert exts and all(n for n, _ in exts) and sum(n for n, _ in exts[:-1]) < 4 * MiB
    c.close()
    healthy(d)


# ---- clients that reset with work in flight ------------------------------------------------------
def _resetting_client(d, transport, i, errors, kind):
    try:
        c = Conn(d, transport, timeout=30).negotiate(structured=i % 3 == 0)
        rng = random.Random(i)
        parts = []
        for k in range(64):
            n = rng.randrange(4, 65) * 1024
            off = rng.randrange(0, (LUN_SIZE - n) // 4096) * 4096
            if kind == "write":
                flags = C.CMD_FLAG_FUA if k % 4 == 0 else 0
                parts.append(struct.pack(">IHHQQI", C.REQUEST_MAGIC, flags, C.CMD_WRITE, k, off, n)
                             + bytes([i]) * n)
                if k % 16 == 15:
                    parts.append(struct.pack(">IHHQQI", C.REQUEST_MAGIC, 0, C.CMD_FLUSH, 1000 + k, 0, 0))
            else:
                parts.append(struct.pack(">IHHQQI", C.REQUEST_MAGIC, 0, C.CMD_READ, k, off, n))
        c.send(b"".join(parts))
        c.close(rst=True)
    except Exception as e:      # noqa: BLE001 - reported by the test
        errors.append(repr(e))


@pytest.mark.parametrize("kind", ["write", "read"])
def test_twenty_clients_reset_with_64_requests_in_flight(d, kind):
    errors: list[str] = []
    threads = [threading.Thread(target=_resetting_client, args=(d, TRANSPORTS[i % 2], i, errors, kind))
               for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    deadline = time.monotonic() + 10
    while d.ctl("status")["connections"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.ctl("status")["connections"] == 0       # every reset connection was dropped
    healthy(d)


def test_reset_while_server_is_blocked_on_writing(d):
    """Many unread READ replies fill the socket (the server pauses reading), then RST."""
    cs = []
    for i in range(6):
        c = Conn(d, TRANSPORTS[i % 2], timeout=30).negotiate(structured=bool(i % 2))
        for k in range(48):
            c.request(C.CMD_READ, k * MiB, MiB)
        cs.append(c)
    time.sleep(0.3)
    for c in cs:
        c.close(rst=True)
    healthy(d)
