"""Sans-IO transmission phase (vsand/nbd/wire.py): request framing, the protocol
checks and the reply encoders, byte-exact against proto.md (NBD-NOTES §1.5-1.8)."""

from __future__ import annotations

import itertools
import struct

import pytest

from vsand.nbd import constants as C
from vsand.nbd import wire
from vsand.nbd.wire import ProtocolError, RequestReader, check

MAGIC = b"\x25\x60\x95\x13"


def req(cmd: int, cookie: int = 0, offset: int = 0, length: int = 0, flags: int = 0,
        payload: bytes | None = None) -> bytes:
    head = struct.pack(">IHHQQI", C.REQUEST_MAGIC, flags, cmd, cookie, offset, length)
    return head + (payload if payload is not None else b"")


def drain(r: RequestReader) -> list[tuple]:
    """Consume requests, copying WRITE payloads at once (the views are only valid
    until the next get_buffer)."""
    return [(cmd, flags, cookie, off, n, None if p is None else bytes(p))
            for cmd, flags, cookie, off, n, p in r.requests()]


def stream() -> tuple[bytes, list[tuple]]:
    items = [
        (C.CMD_READ, 0, 0x0102030405060708, 4096, 512, None),
        (C.CMD_WRITE, C.CMD_FLAG_FUA, 0xFFFFFFFFFFFFFFFF, 0, 7, b"1234567"),
        (C.CMD_WRITE, 0, 3, 512, 0, b""),                               # zero-length write
        (C.CMD_FLUSH, 0, 4, 0, 0, None),
        (C.CMD_TRIM, 0, 5, 1 << 40, 0xFFFFFFFF, None),                  # u32 length
        (C.CMD_WRITE, 0, 6, 8, 300, bytes(range(256)) + b"z" * 44),
        (C.CMD_BLOCK_STATUS, C.CMD_FLAG_REQ_ONE, 7, 0, 1 << 20, None),
        (C.CMD_DISC, 0, 8, 0, 0, None),
    ]
    data = b"".join(req(cmd, cookie, off, n, flags, p) for cmd, flags, cookie, off, n, p in items)
    return data, [(cmd, flags, cookie, off, n, p) for cmd, flags, cookie, off, n, p in items]


# ---- framing -------------------------------------------------------------------------------
def test_header_layout():
    assert wire.REQ.size == 28
    r = RequestReader()
    r.feed(MAGIC + b"\x00\x01" + b"\x00\x00" + bytes.fromhex("a1a2a3a4a5a6a7a8")
           + (123).to_bytes(8, "big") + (45).to_bytes(4, "big"))
    assert drain(r) == [(C.CMD_READ, C.CMD_FLAG_FUA, 0xA1A2A3A4A5A6A7A8, 123, 45, None)]
    assert r.pending() == 0


def test_whole_stream():
    data, expected = stream()
    r = RequestReader()
    r.feed(data)
    assert drain(r) == expected


def test_split_at_every_byte_boundary():
    data, expected = stream()
    for cut in range(1, len(data)):
        r = RequestReader()
        r.feed(data[:cut])
        got = drain(r)
        r.feed(data[cut:])
        got += drain(r)
        assert got == expected, cut


def test_byte_by_byte():
    data, expected = stream()
    r = RequestReader()
    got = []
    for b in data:
        r.feed(bytes([b]))
        got += drain(r)
    assert got == expected


def test_split_in_three_pieces():
    data, expected = stream()
    for a, b in itertools.combinations(range(1, len(data), 13), 2):
        r = RequestReader()
        got = []
        for piece in (data[:a], data[a:b], data[b:]):
            r.feed(piece)
            got += drain(r)
        assert got == expected, (a, b)


def test_buffered_protocol_path_small_reads():
    """get_buffer/buffer_updated as asyncio's BufferedProtocol drives it."""
    data, expected = stream()
    data = data * 20
    r = RequestReader()
    got, pos = [], 0
    while pos < len(data):
        mv = r.get_buffer(-1)
        n = min(len(mv), 37, len(data) - pos)
        mv[:n] = data[pos:pos + n]
        r.buffer_updated(n)
        pos += n
        got += drain(r)
    assert got == expected * 20


def test_payload_views_of_one_pass_stay_valid():
    """All requests of one pass are handled before the next get_buffer: payload
    views taken during the pass must still hold their bytes at its end."""
    data, expected = stream()
    r = RequestReader()
    r.feed(data * 3)
    views = list(r.requests())
    assert [(c, f, k, o, n, None if p is None else bytes(p)) for c, f, k, o, n, p in views] \
        == expected * 3


def test_large_write_arrives_in_pieces_and_the_buffer_stays_bounded():
    """A 10 MiB WRITE is handed out as a CMD_WRITE piece and WRITE_CONT pieces of at
    most PIECE bytes that reassemble to the payload; the receive buffer never grows
    past a piece and some room, whatever the client announced."""
    payload = bytes(range(256)) * (40 * 1024)        # 10 MiB
    data = req(C.CMD_READ, 1, 0, 4096) + req(C.CMD_WRITE, 2, 512, len(payload), 0, payload) \
        + req(C.CMD_FLUSH, 3)
    r = RequestReader()
    got, biggest = [], 0
    step = 1_000_003
    for i in range(0, len(data), step):
        r.feed(data[i:i + step])
        biggest = max(biggest, len(r.buf))
        got += drain(r)
    assert got[0][:5] == (C.CMD_READ, 0, 1, 0, 4096) and got[-1][:5] == (C.CMD_FLUSH, 0, 3, 0, 0)
    pieces = got[1:-1]
    assert [p[0] for p in pieces] == [C.CMD_WRITE] + [wire.WRITE_CONT] * (len(pieces) - 1)
    assert all(p[1:5] == (0, 2, 512, len(payload)) for p in pieces)
    assert all(len(p[5]) <= wire.PIECE for p in pieces) and len(pieces) == 3
    assert b"".join(p[5] for p in pieces) == payload
    assert biggest <= wire.PIECE + 2 * step, biggest


def test_a_promised_payload_costs_one_piece():
    """A header announcing 64 MiB followed by one byte: the buffer holds one piece."""
    r = RequestReader()
    r.feed(req(C.CMD_WRITE, 1, 0, 64 << 20) + b"x")
    assert drain(r) == []
    assert len(r.buf) <= wire.PIECE + (256 << 10)


def test_discard_write_drops_the_rest_of_the_payload():
    payload = b"a" * (wire.PIECE + 10)
    r = RequestReader()
    r.feed(req(C.CMD_WRITE, 1, 0, len(payload), 0, payload) + req(C.CMD_READ, 2, 0, 1))
    first = next(r.requests())
    assert first[0] == C.CMD_WRITE and len(first[5]) == wire.PIECE
    r.discard_write()
    assert drain(r) == [(C.CMD_READ, 0, 2, 0, 1, None)]


def test_trim_gives_a_grown_buffer_back_only_when_idle():
    r = RequestReader()
    r.feed(req(C.CMD_WRITE, 1, 0, 1 << 20, 0, bytes(1 << 20)))
    drain(r)
    assert len(r.buf) > wire.SMALL
    r.trim()                      # data arrived since the last trim: kept
    assert len(r.buf) > wire.SMALL
    r.trim()
    assert len(r.buf) == wire.SMALL


def test_room_makes_write_pieces_smaller_and_is_asked_once_per_write():
    """The owner's ``room`` decides the piece size before the buffer grows (the
    server's memory budget); never below what a small buffer holds."""
    asked = []

    def room(n, held):
        asked.append((n, held))
        return 100_000

    payload = bytes(range(256)) * 4096          # 1 MiB
    data = req(C.CMD_WRITE, 1, 0, len(payload), 0, payload) + req(C.CMD_READ, 2, 0, 1)
    r = RequestReader(room=room)
    pieces = []
    for i in range(0, len(data), 7000):         # the header waits for its payload several times
        r.feed(data[i:i + 7000])
        pieces += drain(r)
        assert len(r.buf) <= 28 + 100_000 + 7000 + (32 << 10), len(r.buf)
    assert asked == [(len(payload), 0)]
    writes = [p for p in pieces if p[0] in (C.CMD_WRITE, wire.WRITE_CONT)]
    assert [len(p[5]) for p in writes[:-1]] == [100_000] * (len(payload) // 100_000)
    assert b"".join(p[5] for p in writes) == payload
    assert pieces[-1] == (C.CMD_READ, 0, 2, 0, 1, None)

    r = RequestReader(room=lambda n, held: 0)
    data = req(C.CMD_WRITE, 3, 0, 1 << 20, 0, payload)
    got = []
    for i in range(0, len(data), 7000):
        r.feed(data[i:i + 7000])
        got += drain(r)
        assert len(r.buf) <= wire.SMALL
    assert {len(p[5]) for p in got} == {wire.MIN_PIECE, (1 << 20) % wire.MIN_PIECE}


def test_shrink_gives_a_grown_buffer_back_at_once_unless_a_write_is_under_way():
    r = RequestReader()
    r.feed(req(C.CMD_WRITE, 1, 0, 2 << 20, 0, bytes(1 << 20)))
    assert len(drain(r)) == 0 and len(r.buf) > wire.SMALL
    assert not r.shrink()                       # its first piece is still arriving
    r.feed(bytes(1 << 20) + req(C.CMD_READ, 2, 0, 1) + MAGIC)
    assert [p[0] for p in drain(r)] == [C.CMD_WRITE, C.CMD_READ]
    assert r.extra() > 0 and r.shrink()
    assert len(r.buf) == wire.SMALL and r.extra() == 0 and r.pending() == 4
    r.feed(req(C.CMD_READ, 3, 0, 1)[4:])
    assert drain(r) == [(C.CMD_READ, 0, 3, 0, 1, None)]


@pytest.mark.parametrize("cut", [1, 27, 28, 29, 150, 228, 229, 250])
def test_oversized_write_skipped_and_reported(cut):
    big = bytes(200)
    data = req(C.CMD_WRITE, 9, 0, len(big), 0, big) + req(C.CMD_WRITE, 10, 4, 3, 0, b"abc") \
        + req(C.CMD_READ, 11, 0, 1)
    r = RequestReader(max_payload=100)
    r.feed(data[:cut])
    got = drain(r)
    r.feed(data[cut:])
    got += drain(r)
    assert got == [(C.CMD_WRITE, 0, 9, 0, 200, None), (C.CMD_WRITE, 0, 10, 4, 3, b"abc"),
                   (C.CMD_READ, 0, 11, 0, 1, None)]


def test_oversized_write_skipped_byte_by_byte():
    data = req(C.CMD_WRITE, 9, 0, 101, 0, b"\x25" * 101) + req(C.CMD_READ, 11, 0, 1)
    r = RequestReader(max_payload=100)
    got = []
    for b in data:
        r.feed(bytes([b]))
        got += drain(r)
    assert got == [(C.CMD_WRITE, 0, 9, 0, 101, None), (C.CMD_READ, 0, 11, 0, 1, None)]


def test_write_of_exactly_max_payload_is_delivered():
    r = RequestReader(max_payload=100)
    r.feed(req(C.CMD_WRITE, 1, 0, 100, 0, b"q" * 100))
    assert drain(r) == [(C.CMD_WRITE, 0, 1, 0, 100, b"q" * 100)]


def test_default_limit_skips_a_write_over_64_mib():
    n = C.MAX_ACCEPTED + 1
    r = RequestReader()
    assert r.max_payload == 64 << 20
    r.feed(req(C.CMD_WRITE, 1, 0, n))
    got = drain(r)
    chunk = bytes(1 << 20)
    left = n
    while left:
        k = min(left, len(chunk))
        r.feed(chunk[:k])
        left -= k
        got += drain(r)
    r.feed(req(C.CMD_READ, 2, 0, 512))
    got += drain(r)
    assert got == [(C.CMD_WRITE, 0, 1, 0, n, None), (C.CMD_READ, 0, 2, 0, 512, None)]
    assert len(r.buf) < 16 << 20            # the skipped payload was never buffered


@pytest.mark.parametrize("bad", [b"\x00\x00\x00\x00", b"\x25\x60\x95\x14", b"\x67\x44\x66\x98",
                                 b"\x21\xe4\x1c\x71"])
def test_bad_magic_raises_after_good_requests(bad):
    r = RequestReader()
    r.feed(req(C.CMD_READ, 1, 0, 1) + bad + req(C.CMD_READ, 2, 0, 1)[4:])
    it = r.requests()
    assert next(it)[:3] == (C.CMD_READ, 0, 1)
    with pytest.raises(ProtocolError):
        next(it)


def test_bad_magic_after_write_payload():
    r = RequestReader()
    r.feed(req(C.CMD_WRITE, 1, 0, 4, 0, b"abcd") + b"garbage" * 5)
    got = []
    with pytest.raises(ProtocolError):
        for x in r.requests():
            got.append(bytes(x[5]))
    assert got == [b"abcd"]


def test_incomplete_header_waits():
    r = RequestReader()
    r.feed(req(C.CMD_READ, 1, 0, 1)[:27])
    assert drain(r) == []
    assert r.pending() == 27


# ---- check() -------------------------------------------------------------------------------
SIZE = 1 << 20
RW = C.FLAG_HAS_FLAGS | C.FLAG_SEND_FLUSH | C.FLAG_SEND_FUA | C.FLAG_SEND_TRIM \
    | C.FLAG_SEND_WRITE_ZEROES | C.FLAG_SEND_FAST_ZERO | C.FLAG_SEND_CACHE
STRUCT = RW | C.FLAG_SEND_DF
ALL_CMDS = range(8)
ALLOWED = {
    C.CMD_READ: C.CMD_FLAG_FUA | C.CMD_FLAG_DF,
    C.CMD_WRITE: C.CMD_FLAG_FUA,
    C.CMD_DISC: C.CMD_FLAG_FUA,
    C.CMD_FLUSH: C.CMD_FLAG_FUA,
    C.CMD_TRIM: C.CMD_FLAG_FUA,
    C.CMD_CACHE: C.CMD_FLAG_FUA,
    C.CMD_WRITE_ZEROES: C.CMD_FLAG_FUA | C.CMD_FLAG_NO_HOLE | C.CMD_FLAG_FAST_ZERO,
    C.CMD_BLOCK_STATUS: C.CMD_FLAG_FUA | C.CMD_FLAG_REQ_ONE,
}


def ok(cmd, flags=0, off=0, n=512, size=SIZE, tflags=STRUCT, meta=True):
    return check(cmd, flags, off, n, size, tflags, meta)


@pytest.mark.parametrize("cmd", [8, 9, 11, 0x100, 0xFFFF])
def test_unknown_command_einval(cmd):
    err, msg = ok(cmd)
    assert err == C.EINVAL and msg


@pytest.mark.parametrize("cmd", ALL_CMDS)
def test_flags_per_command(cmd):
    for bit in range(16):
        f = 1 << bit
        err, _ = ok(cmd, f)
        if f & ALLOWED[cmd]:
            assert err == 0, (cmd, bit)
        else:
            assert err == C.EINVAL, (cmd, bit)
    assert ok(cmd, ALLOWED[cmd])[0] == 0


def test_fua_accepted_on_every_command():
    for cmd in ALL_CMDS:
        assert ok(cmd, C.CMD_FLAG_FUA)[0] == 0


def test_df_needs_structured():
    assert ok(C.CMD_READ, C.CMD_FLAG_DF, tflags=RW)[0] == C.EINVAL
    assert ok(C.CMD_READ, C.CMD_FLAG_DF, tflags=STRUCT)[0] == 0


@pytest.mark.parametrize("cmd", [C.CMD_WRITE, C.CMD_TRIM, C.CMD_WRITE_ZEROES])
def test_read_only_eperm(cmd):
    ro = RW | C.FLAG_READ_ONLY
    assert ok(cmd, tflags=ro)[0] == C.EPERM
    assert ok(cmd, C.CMD_FLAG_FUA, tflags=ro)[0] == C.EPERM


@pytest.mark.parametrize("cmd", [C.CMD_READ, C.CMD_FLUSH, C.CMD_CACHE, C.CMD_BLOCK_STATUS, C.CMD_DISC])
def test_read_only_allows_non_writes(cmd):
    assert ok(cmd, tflags=RW | C.FLAG_READ_ONLY)[0] == 0


@pytest.mark.parametrize("cmd,errno", [
    (C.CMD_READ, C.EINVAL), (C.CMD_TRIM, C.EINVAL), (C.CMD_CACHE, C.EINVAL),
    (C.CMD_BLOCK_STATUS, C.EINVAL), (C.CMD_WRITE, C.ENOSPC), (C.CMD_WRITE_ZEROES, C.ENOSPC),
])
def test_out_of_range(cmd, errno):
    assert ok(cmd, off=SIZE - 512, n=512)[0] == 0            # up to the end is fine
    assert ok(cmd, off=SIZE - 511, n=512)[0] == errno
    assert ok(cmd, off=SIZE, n=1)[0] == errno
    assert ok(cmd, off=SIZE + 1, n=0)[0] == errno
    assert ok(cmd, off=(1 << 64) - 1, n=0xFFFFFFFF)[0] == errno   # no wrap-around
    assert ok(cmd, off=0, n=SIZE + 1)[0] == errno


@pytest.mark.parametrize("cmd", [C.CMD_FLUSH, C.CMD_DISC])
def test_flush_disc_ignore_offset_and_length(cmd):
    assert ok(cmd, off=1 << 62, n=0xFFFFFFFF)[0] == 0


def test_block_status_without_meta_context():
    assert ok(C.CMD_BLOCK_STATUS, meta=False)[0] == C.EINVAL
    assert ok(C.CMD_BLOCK_STATUS, meta=True)[0] == 0


def test_trim_and_zero_take_full_u32_lengths():
    big = 8 << 30
    for cmd in (C.CMD_TRIM, C.CMD_WRITE_ZEROES):
        assert check(cmd, 0, 0, 0xFFFFFFFF, big, RW, False)[0] == 0


def test_oversized_read_and_write():
    big = 1 << 30
    assert check(C.CMD_READ, 0, 0, C.MAX_ACCEPTED, big, RW, False)[0] == 0
    assert check(C.CMD_READ, 0, 0, C.MAX_ACCEPTED + 1, big, RW, False)[0] == C.EINVAL
    assert check(C.CMD_READ, C.CMD_FLAG_DF, 0, C.MAX_ACCEPTED + 1, big, STRUCT, False)[0] \
        in (C.EOVERFLOW, C.EINVAL)
    assert check(C.CMD_WRITE, 0, 0, C.MAX_ACCEPTED, big, RW, False)[0] == 0
    assert check(C.CMD_WRITE, 0, 0, C.MAX_ACCEPTED + 1, big, RW, False)[0] != 0
    # a request that is both too big and out of range is still an error
    assert check(C.CMD_WRITE, 0, 0, C.MAX_ACCEPTED + 1, SIZE, RW, False)[0] == C.ENOSPC


def test_zero_length_is_not_an_error_inside_the_export():
    for cmd in (C.CMD_READ, C.CMD_WRITE, C.CMD_TRIM, C.CMD_WRITE_ZEROES, C.CMD_CACHE):
        assert ok(cmd, off=100, n=0)[0] == 0


def test_check_messages_are_strings():
    for cmd in range(10):
        for f in (0, 0xFFFF):
            err, msg = ok(cmd, f, off=1 << 40, tflags=RW | C.FLAG_READ_ONLY, meta=False)
            assert isinstance(msg, str) and (err == 0) == (msg == "")


# ---- reply encoders ----------------------------------------------------------------------------
COOKIE = 0x0123456789ABCDEF
CK = bytes.fromhex("0123456789abcdef")


def test_simple_reply_bytes():
    assert wire.simple(COOKIE) == bytes.fromhex("67446698") + bytes(4) + CK
    assert wire.simple(COOKIE, C.ENOSPC) == bytes.fromhex("67446698 0000001c") + CK
    assert len(wire.simple(0)) == 16


def test_chunk_header_bytes():
    assert wire.chunk(COOKIE, C.REPLY_TYPE_OFFSET_DATA, 9) == \
        bytes.fromhex("668e33ef 0001 0001") + CK + bytes.fromhex("00000009")
    assert wire.chunk(COOKIE, C.REPLY_TYPE_OFFSET_DATA, 9, done=False) == \
        bytes.fromhex("668e33ef 0000 0001") + CK + bytes.fromhex("00000009")


def test_data_chunk_head():
    h = wire.data_chunk_head(COOKIE, 0x1000, 512)
    assert h == bytes.fromhex("668e33ef 0001 0001") + CK + (520).to_bytes(4, "big") \
        + (0x1000).to_bytes(8, "big")
    assert len(h) == 28
    assert wire.data_chunk_head(COOKIE, 0, 1, done=False)[4:6] == b"\x00\x00"


def test_hole_chunk():
    h = wire.hole_chunk(COOKIE, 4096, 8192, done=False)
    assert h == bytes.fromhex("668e33ef 0000 0002") + CK + (12).to_bytes(4, "big") \
        + (4096).to_bytes(8, "big") + (8192).to_bytes(4, "big")


def test_done_chunk():
    assert wire.done_chunk(COOKIE) == bytes.fromhex("668e33ef 0001 0000") + CK + bytes(4)


def test_error_chunk():
    e = wire.error_chunk(COOKIE, C.EINVAL, "bad")
    assert e == bytes.fromhex("668e33ef 0001 8001") + CK + (9).to_bytes(4, "big") \
        + (22).to_bytes(4, "big") + (3).to_bytes(2, "big") + b"bad"
    empty = wire.error_chunk(COOKIE, C.EIO)
    assert empty[16:20] == (6).to_bytes(4, "big") and len(empty) == 26


def test_error_chunk_message_capped_at_4096():
    e = wire.error_chunk(COOKIE, C.EIO, "m" * 10000)
    (n,) = struct.unpack_from(">I", e, 16)
    (mlen,) = struct.unpack_from(">H", e, 24)
    assert mlen == 4096 and n == 6 + 4096 and len(e) == 20 + n


def test_block_status_chunk():
    b = wire.block_status_chunk(COOKIE, 1, [(4096, 0), (8192, C.STATE_HOLE | C.STATE_ZERO)])
    assert b == bytes.fromhex("668e33ef 0001 0005") + CK + (4 + 16).to_bytes(4, "big") \
        + bytes.fromhex("00000001" "00001000 00000000" "00002000 00000003")
    nd = wire.block_status_chunk(COOKIE, 7, [(1, 0)], done=False)
    assert nd[4:6] == b"\x00\x00" and nd[16:20] == (12).to_bytes(4, "big")


def test_error_reply_form():
    assert wire.error_reply(COOKIE, C.EPERM, "ro", structured=False) == wire.simple(COOKIE, C.EPERM)
    s = wire.error_reply(COOKIE, C.EPERM, "ro", structured=True)
    assert s == wire.error_chunk(COOKIE, C.EPERM, "ro")
    assert s[6:8] == b"\x80\x01" and s[4:6] == b"\x00\x01"


def test_protocol_numbers():
    assert (C.REQUEST_MAGIC, C.SIMPLE_REPLY_MAGIC, C.STRUCTURED_REPLY_MAGIC) == \
        (0x25609513, 0x67446698, 0x668E33EF)
    assert (C.EPERM, C.EIO, C.ENOMEM, C.EINVAL, C.ENOSPC, C.EOVERFLOW, C.ENOTSUP, C.ESHUTDOWN) == \
        (1, 5, 12, 22, 28, 75, 95, 108)
    assert (C.REPLY_TYPE_ERROR, C.REPLY_TYPE_ERROR_OFFSET, C.REPLY_TYPE_BLOCK_STATUS) == \
        (0x8001, 0x8002, 5)


def test_error_chunk_message_capped_on_a_character_boundary():
    e = wire.error_chunk(COOKIE, C.EIO, "x" + "é" * 3000)
    (mlen,) = struct.unpack_from(">H", e, 24)
    assert mlen <= 4096 and len(e) == 26 + mlen
    assert struct.unpack_from(">I", e, 16)[0] == 6 + mlen
    e[26:].decode("utf-8")


@pytest.mark.parametrize("seed", range(6))
def test_random_stream_through_buffer_reallocations(seed):
    """Random requests (payloads up to 1 MiB, some over a small limit) fed in random
    receive sizes through get_buffer/buffer_updated: exercises buffer reuse, the
    reallocation when room runs low and growth for large payloads."""
    import random
    rng = random.Random(seed)
    limit = 768 << 10
    expected, parts = [], []
    for i in range(300):
        cmd = rng.choice([C.CMD_READ, C.CMD_WRITE, C.CMD_WRITE, C.CMD_FLUSH, C.CMD_TRIM])
        n = rng.choice([0, 1, 511, 4096, 65536, rng.randrange(1, 1 << 20)])
        payload = None
        if cmd == C.CMD_WRITE:
            payload = rng.randbytes(n)
            expected.append((cmd, 0, i, i * 512, n, payload if n <= limit else None))
        else:
            expected.append((cmd, 0, i, i * 512, n, None))
        parts.append(req(cmd, i, i * 512, n, 0, payload))
    data = b"".join(parts)
    r = RequestReader(max_payload=limit)
    got, pos = [], 0
    while pos < len(data):
        mv = r.get_buffer(-1)
        k = min(len(mv), rng.choice([1, 27, 28, 4096, 300_000, 2 << 20]), len(data) - pos)
        mv[:k] = data[pos:pos + k]
        r.buffer_updated(k)
        pos += k
        got += drain(r)
    assert got == expected
    assert r.pending() == 0 and r.skip == 0
