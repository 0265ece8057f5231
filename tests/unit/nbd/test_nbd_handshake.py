"""Byte-exact tests of the sans-IO fixed-newstyle handshake (vsand/nbd/handshake.py)
against NetworkBlockDevice/nbd doc/proto.md (see /work/shared/NBD-NOTES.md §1.2-1.4)."""

from __future__ import annotations

import struct

import pytest

from vsand.nbd import constants as C
from vsand.nbd.handshake import Closed, Export, Handshake, Negotiated

DISK = Export("disk", 1 << 20, False, "1 MiB RAID5")
RO = Export("ro", 8 << 20, True, "")
EXPORTS = {e.name: e for e in (DISK, RO)}

OPT_REPLY_MAGIC = b"\x00\x03\xe8\x89\x04\x55\x65\xa9"      # 0x3e889045565a9, 8 bytes BE
IHAVEOPT = b"IHAVEOPT"
BASE_FLAGS = (C.FLAG_HAS_FLAGS | C.FLAG_SEND_FLUSH | C.FLAG_SEND_FUA | C.FLAG_SEND_TRIM
              | C.FLAG_SEND_WRITE_ZEROES | C.FLAG_SEND_FAST_ZERO | C.FLAG_CAN_MULTI_CONN
              | C.FLAG_SEND_CACHE)


def make(shutting_down=False, **kw) -> Handshake:
    return Handshake(EXPORTS.get, lambda: list(EXPORTS.values()), lambda: shutting_down, **kw)


def opt(o: int, data: bytes = b"") -> bytes:
    return IHAVEOPT + struct.pack(">II", o, len(data)) + data


def rep(o: int, rtype: int, data: bytes = b"") -> bytes:
    return OPT_REPLY_MAGIC + struct.pack(">III", o, rtype, len(data)) + data


def parse(out: bytes) -> list[tuple[int, int, bytes]]:
    """Split option replies; asserts the bytes are exactly a sequence of replies."""
    res, pos = [], 0
    while pos < len(out):
        assert out[pos:pos + 8] == OPT_REPLY_MAGIC, out[pos:pos + 8]
        o, t, n = struct.unpack_from(">III", out, pos + 8)
        assert pos + 20 + n <= len(out), "reply length overruns the output"
        res.append((o, t, out[pos + 20:pos + 20 + n]))
        pos += 20 + n
    return res


def info_go(name: bytes, reqs=(), *, namelen: int | None = None) -> bytes:
    n = len(name) if namelen is None else namelen
    return struct.pack(">I", n) + name + struct.pack(">H", len(reqs)) + b"".join(
        struct.pack(">H", r) for r in reqs)


def meta(name: bytes, queries=(), *, count: int | None = None) -> bytes:
    q = b"".join(struct.pack(">I", len(x)) + x for x in queries)
    return struct.pack(">I", len(name)) + name + struct.pack(">I",
                                                              len(queries) if count is None else count) + q


def started(cflags: int = 3, **kw) -> Handshake:
    hs = make(**kw)
    out, outcome = hs.receive(struct.pack(">I", cflags))
    assert (out, outcome) == (b"", None)
    return hs


def structured(**kw) -> Handshake:
    hs = started(**kw)
    out, outcome = hs.receive(opt(C.OPT_STRUCTURED_REPLY))
    assert out == rep(C.OPT_STRUCTURED_REPLY, C.REP_ACK) and outcome is None
    return hs


def expect_single(hs: Handshake, o: int, data: bytes, rtype: int) -> bytes:
    out, outcome = hs.receive(opt(o, data))
    assert outcome is None
    [(ro, rt, payload)] = parse(out)
    assert (ro, rt) == (o, rtype)
    return payload


# ---- greeting and client flags -------------------------------------------------------
def test_greeting_bytes():
    g = Handshake.greeting()
    assert g == bytes.fromhex("4e42444d41474943" "49484156454f5054" "0003")
    assert len(g) == 18


@pytest.mark.parametrize("bit", range(2, 32))
def test_unknown_client_flag_bit_closes(bit):
    hs = make()
    out, outcome = hs.receive(struct.pack(">I", 1 | (1 << bit)) + opt(C.OPT_LIST))
    assert out == b"" and isinstance(outcome, Closed)


def test_client_flags_arrive_split():
    hs = make()
    for b in struct.pack(">I", 3):
        assert hs.receive(bytes([b])) == (b"", None)
    assert hs.no_zeroes


@pytest.mark.parametrize("cflags", [0, 1])
def test_without_no_zeroes_export_name_pads_124_zeros(cflags):
    hs = started(cflags)
    out, outcome = hs.receive(opt(C.OPT_EXPORT_NAME, b"disk"))
    assert out == struct.pack(">QH", DISK.size, BASE_FLAGS) + bytes(124)
    assert len(out) == 134
    assert isinstance(outcome, Negotiated)
    assert outcome.export == DISK and outcome.flags == BASE_FLAGS
    assert not outcome.structured and outcome.meta_contexts == {}


@pytest.mark.parametrize("cflags", [2, 3])
def test_no_zeroes_honoured(cflags):
    hs = started(cflags)
    out, outcome = hs.receive(opt(C.OPT_EXPORT_NAME, b"disk"))
    assert out == struct.pack(">QH", DISK.size, BASE_FLAGS)
    assert isinstance(outcome, Negotiated)


# ---- EXPORT_NAME -------------------------------------------------------------------------
def test_export_name_read_only_flag():
    hs = started()
    out, outcome = hs.receive(opt(C.OPT_EXPORT_NAME, b"ro"))
    assert out == struct.pack(">QH", RO.size, BASE_FLAGS | C.FLAG_READ_ONLY)
    assert outcome.flags & C.FLAG_READ_ONLY


@pytest.mark.parametrize("name", [b"nosuch", b"", b"di\0sk", b"\xff\xfe", b"x" * 5000])
def test_export_name_unknown_closes_without_reply(name):
    hs = started()
    out, outcome = hs.receive(opt(C.OPT_EXPORT_NAME, name))
    assert out == b"" and isinstance(outcome, Closed)


def test_export_name_empty_uses_default_lookup():
    hs = Handshake(lambda n: DISK if n in ("", "disk") else None, lambda: [DISK])
    hs.receive(struct.pack(">I", 3))
    out, outcome = hs.receive(opt(C.OPT_EXPORT_NAME))
    assert out == struct.pack(">QH", DISK.size, BASE_FLAGS)
    assert outcome.export == DISK


def test_export_name_after_replies_in_same_buffer_keeps_them():
    hs = started()
    out, outcome = hs.receive(opt(C.OPT_STRUCTURED_REPLY) + opt(C.OPT_EXPORT_NAME, b"disk")
                              + b"REQUEST")
    assert out == rep(C.OPT_STRUCTURED_REPLY, C.REP_ACK) + struct.pack(
        ">QH", DISK.size, BASE_FLAGS | C.FLAG_SEND_DF)
    assert outcome.structured and outcome.leftover == b"REQUEST"


# ---- ABORT -------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"", b"ignored data"])
def test_abort_acks_then_closes(data):
    hs = started()
    out, outcome = hs.receive(opt(C.OPT_ABORT, data) + opt(C.OPT_LIST))
    assert out == rep(C.OPT_ABORT, C.REP_ACK)
    assert isinstance(outcome, Closed)


def test_abort_acked_even_while_shutting_down():
    hs = started(shutting_down=True)
    out, outcome = hs.receive(opt(C.OPT_ABORT))
    assert out == rep(C.OPT_ABORT, C.REP_ACK) and isinstance(outcome, Closed)


def test_shutting_down_answers_err_shutdown():
    hs = started(shutting_down=True)
    for o, data in ((C.OPT_LIST, b""), (C.OPT_GO, info_go(b"disk"))):
        payload = expect_single(hs, o, data, C.REP_ERR_SHUTDOWN)
        assert payload  # human-readable message


def test_refused_connection_answers_err_policy_and_closes_on_export_name():
    hs = started(refused="too many connections (the limit is 3)")
    for o, data in ((C.OPT_LIST, b""), (C.OPT_GO, info_go(b"disk")), (C.OPT_INFO, info_go(b"disk")),
                    (C.OPT_STRUCTURED_REPLY, b"")):
        payload = expect_single(hs, o, data, C.REP_ERR_POLICY)
        assert payload == b"too many connections (the limit is 3)"
    out, outcome = hs.receive(opt(C.OPT_EXPORT_NAME, b"disk"))
    assert out == b"" and isinstance(outcome, Closed) and "too many" in outcome.reason
    hs = started(refused="no")
    out, outcome = hs.receive(opt(C.OPT_ABORT))
    assert out == rep(C.OPT_ABORT, C.REP_ACK) and isinstance(outcome, Closed)


# ---- LIST --------------------------------------------------------------------------------
def test_list_one_server_reply_per_export_then_ack():
    hs = started()
    out, outcome = hs.receive(opt(C.OPT_LIST))
    assert outcome is None
    desc = DISK.description.encode()
    assert out == (rep(C.OPT_LIST, C.REP_SERVER, struct.pack(">I", 4) + b"disk" + desc)
                   + rep(C.OPT_LIST, C.REP_SERVER, struct.pack(">I", 2) + b"ro")
                   + rep(C.OPT_LIST, C.REP_ACK))
    replies = parse(out)
    # reply length = 4 + name length + description length (NBD-NOTES G-3)
    assert [len(d) for _, _, d in replies] == [4 + 4 + len(desc), 4 + 2, 0]


def test_list_empty():
    hs = Handshake(lambda n: None, lambda: [])
    hs.receive(struct.pack(">I", 3))
    assert hs.receive(opt(C.OPT_LIST)) == (rep(C.OPT_LIST, C.REP_ACK), None)


def test_list_with_data_is_invalid_and_nothing_else():
    hs = started()
    out, outcome = hs.receive(opt(C.OPT_LIST, b"junk"))
    assert outcome is None
    [(o, t, _)] = parse(out)
    assert (o, t) == (C.OPT_LIST, C.REP_ERR_INVALID)
    # still in sync
    assert parse(hs.receive(opt(C.OPT_LIST))[0])[-1] == (C.OPT_LIST, C.REP_ACK, b"")


# ---- INFO / GO ---------------------------------------------------------------------------
def export_info(e: Export, flags: int) -> bytes:
    return struct.pack(">HQH", C.INFO_EXPORT, e.size, flags)


@pytest.mark.parametrize("o", [C.OPT_INFO, C.OPT_GO])
def test_info_go_export_info_always(o):
    hs = started()
    out, outcome = hs.receive(opt(o, info_go(b"disk")))
    assert out == rep(o, C.REP_INFO, export_info(DISK, BASE_FLAGS)) + rep(o, C.REP_ACK)
    assert len(export_info(DISK, BASE_FLAGS)) == 12
    if o == C.OPT_INFO:
        assert outcome is None
    else:
        assert isinstance(outcome, Negotiated) and outcome.export == DISK
        assert outcome.flags == BASE_FLAGS and outcome.leftover == b""


@pytest.mark.parametrize("o", [C.OPT_INFO, C.OPT_GO])
def test_info_go_requested_infos(o):
    hs = started()
    reqs = (C.INFO_NAME, C.INFO_DESCRIPTION, C.INFO_BLOCK_SIZE, 999)   # 999: unknown, ignored
    out, _ = hs.receive(opt(o, info_go(b"disk", reqs)))
    got = parse(out)
    assert all(ro == o for ro, _, _ in got)
    assert got[-1] == (o, C.REP_ACK, b"")
    infos = {struct.unpack(">H", d[:2])[0]: d for _, t, d in got[:-1] if t == C.REP_INFO}
    assert len(infos) == len(got) - 1        # each info type at most once, all are INFO
    assert infos[C.INFO_EXPORT] == export_info(DISK, BASE_FLAGS)
    assert infos[C.INFO_NAME] == struct.pack(">H", C.INFO_NAME) + b"disk"
    assert infos[C.INFO_DESCRIPTION] == struct.pack(">H", C.INFO_DESCRIPTION) + DISK.description.encode()
    assert infos[C.INFO_BLOCK_SIZE] == struct.pack(">HIII", C.INFO_BLOCK_SIZE, 1, 4096, 32 << 20)
    assert set(infos) == {C.INFO_EXPORT, C.INFO_NAME, C.INFO_DESCRIPTION, C.INFO_BLOCK_SIZE}


def test_info_block_size_values_are_valid():
    hs = started()
    out, _ = hs.receive(opt(C.OPT_INFO, info_go(b"disk", [C.INFO_BLOCK_SIZE])))
    [blk] = [d for _, t, d in parse(out) if t == C.REP_INFO and d[:2] == b"\x00\x03"]
    mn, pref, mx = struct.unpack(">III", blk[2:])
    assert mn & (mn - 1) == 0 and mn <= 65536
    assert pref & (pref - 1) == 0 and pref >= max(mn, 512)
    assert mx >= pref and mx % mn == 0 and mx >= 32 << 20


def test_info_then_go_same_information():
    hs = started()
    out_i, _ = hs.receive(opt(C.OPT_INFO, info_go(b"ro", [C.INFO_NAME])))
    out_g, outcome = hs.receive(opt(C.OPT_GO, info_go(b"ro", [C.INFO_NAME])))
    assert [(t, d) for _, t, d in parse(out_i)] == [(t, d) for _, t, d in parse(out_g)]
    assert outcome.flags == BASE_FLAGS | C.FLAG_READ_ONLY


@pytest.mark.parametrize("o", [C.OPT_INFO, C.OPT_GO])
@pytest.mark.parametrize("data", [
    info_go(b"disk", namelen=5),              # name length overruns (> option length - 6)
    info_go(b"disk", namelen=0xFFFFFFFF),
    b"\x00\x00\x00\x04disk\x00",              # truncated count
    b"\x00\x00",                              # shorter than 6
    b"",
    info_go(b"disk") + b"\x00",               # count does not match the length
    info_go(b"disk", [1])[:-1],
    info_go(b"\xff\xfe"),                     # not UTF-8
])
def test_info_go_malformed_is_invalid(o, data):
    hs = started()
    payload = expect_single(hs, o, data, C.REP_ERR_INVALID)
    assert b"\0" not in payload
    # consumed exactly: the next option is answered normally
    out, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert isinstance(outcome, Negotiated)


@pytest.mark.parametrize("o", [C.OPT_INFO, C.OPT_GO])
def test_info_go_unknown_export(o):
    hs = started()
    out, outcome = hs.receive(opt(o, info_go(b"nosuch", [C.INFO_NAME])))
    assert outcome is None
    [(ro, t, _)] = parse(out)          # no INFO replies before the error
    assert (ro, t) == (o, C.REP_ERR_UNKNOWN)


def test_go_no_padding_and_leftover_preserved():
    hs = started(cflags=1)             # no NO_ZEROES: GO still must not pad
    request = struct.pack(">IHHQQI", C.REQUEST_MAGIC, 0, C.CMD_READ, 7, 0, 512)
    out, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")) + request + b"partial")
    assert out == rep(C.OPT_GO, C.REP_INFO, export_info(DISK, BASE_FLAGS)) + rep(C.OPT_GO, C.REP_ACK)
    assert isinstance(outcome, Negotiated)
    assert outcome.leftover == request + b"partial"


def test_go_empty_name_default_export():
    hs = Handshake(lambda n: DISK if n in ("", "disk") else None, lambda: [DISK])
    hs.receive(struct.pack(">I", 3))
    out, outcome = hs.receive(opt(C.OPT_GO, info_go(b"", [C.INFO_NAME])))
    assert isinstance(outcome, Negotiated) and outcome.export == DISK
    infos = [d for _, t, d in parse(out) if t == C.REP_INFO]
    assert struct.pack(">H", C.INFO_NAME) + b"disk" in infos


# ---- STRUCTURED_REPLY and the DF transmission flag ----------------------------------------
def test_structured_reply_ack_and_df():
    hs = structured()
    assert hs.structured
    out, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    flags = BASE_FLAGS | C.FLAG_SEND_DF
    assert out == rep(C.OPT_GO, C.REP_INFO, export_info(DISK, flags)) + rep(C.OPT_GO, C.REP_ACK)
    assert outcome.structured and outcome.flags == flags


def test_structured_reply_with_data_is_invalid():
    hs = started()
    expect_single(hs, C.OPT_STRUCTURED_REPLY, b"x", C.REP_ERR_INVALID)
    assert not hs.structured
    out, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert not outcome.structured and not outcome.flags & C.FLAG_SEND_DF


@pytest.mark.parametrize("o", [C.OPT_INFO, C.OPT_GO])
def test_df_never_without_structured(o):
    hs = started()
    out, _ = hs.receive(opt(o, info_go(b"disk")))
    (flags,) = struct.unpack(">H", parse(out)[0][2][10:12])
    assert not flags & C.FLAG_SEND_DF
    assert flags & C.FLAG_HAS_FLAGS
    assert not flags & ~0x0FFF              # no bits beyond SEND_FAST_ZERO
    assert not flags & C.FLAG_SEND_RESIZE
    # FAST_ZERO only with WRITE_ZEROES
    assert not (flags & C.FLAG_SEND_FAST_ZERO) or flags & C.FLAG_SEND_WRITE_ZEROES


# ---- LIST/SET_META_CONTEXT ---------------------------------------------------------------
def ctx_replies(out: bytes, o: int) -> list[tuple[int, bytes]]:
    got = parse(out)
    assert got[-1] == (o, C.REP_ACK, b""), got
    assert all(ro == o and t == C.REP_META_CONTEXT for ro, t, _ in got[:-1])
    return [(struct.unpack(">I", d[:4])[0], d[4:]) for _, _, d in got[:-1]]


@pytest.mark.parametrize("queries,expected", [
    ([b"base:allocation"], [b"base:allocation"]),
    ([b"base:"], [b"base:allocation"]),
    ([], [b"base:allocation"]),                                   # zero queries: list all
    ([b"qemu:dirty-bitmap:x"], []),                               # unknown namespace ignored
    ([b"qemu:"], []),
    ([b"base:nosuchleaf"], []),
    ([b"qemu:dirty-bitmap:x", b"base:allocation"], [b"base:allocation"]),
    ([b"base:", b"base:allocation"], [b"base:allocation"]),       # each context once
])
def test_list_meta_context(queries, expected):
    hs = structured()
    out, outcome = hs.receive(opt(C.OPT_LIST_META_CONTEXT, meta(b"disk", queries)))
    assert outcome is None
    got = ctx_replies(out, C.OPT_LIST_META_CONTEXT)
    assert [n for _, n in got] == expected
    assert all(i == 0 for i, _ in got)


@pytest.mark.parametrize("o", [C.OPT_LIST_META_CONTEXT, C.OPT_SET_META_CONTEXT])
def test_meta_context_before_structured_is_invalid(o):
    hs = started()
    expect_single(hs, o, meta(b"disk", [b"base:allocation"]), C.REP_ERR_INVALID)
    out, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert outcome.meta_contexts == {}


@pytest.mark.parametrize("o", [C.OPT_LIST_META_CONTEXT, C.OPT_SET_META_CONTEXT])
@pytest.mark.parametrize("data", [
    b"",
    b"\x00\x00\x00\x04disk",                                       # no query count
    struct.pack(">I", 50) + b"disk" + struct.pack(">I", 0),        # name length overruns
    struct.pack(">I", 0xFFFFFFFF) + struct.pack(">I", 0),
    meta(b"disk", [b"base:allocation"], count=2),                  # count claims more queries
    meta(b"disk", [b"base:allocation"])[:-1],                      # query overruns
    meta(b"disk", [b"base:allocation"])[:-16] + struct.pack(">I", 1 << 31) + b"base:allocation",
    meta(b"disk", [b"base:allocation"]) + b"\x00",                 # trailing bytes
    meta(b"disk", [b"base:allocation"]) + b"\x00\x00\x00",
])
def test_meta_context_malformed_is_invalid(o, data):
    hs = structured()
    expect_single(hs, o, data, C.REP_ERR_INVALID)
    # exactly consumed: next option fine
    got = ctx_replies(hs.receive(opt(C.OPT_LIST_META_CONTEXT, meta(b"disk", [])))[0],
                      C.OPT_LIST_META_CONTEXT)
    assert [n for _, n in got] == [b"base:allocation"]


@pytest.mark.parametrize("o", [C.OPT_LIST_META_CONTEXT, C.OPT_SET_META_CONTEXT])
def test_meta_context_unknown_export(o):
    hs = structured()
    expect_single(hs, o, meta(b"nosuch", [b"base:allocation"]), C.REP_ERR_UNKNOWN)


def test_set_meta_context_applies_at_go_with_same_id():
    hs = structured()
    out, _ = hs.receive(opt(C.OPT_SET_META_CONTEXT,
                            meta(b"disk", [b"qemu:dirty-bitmap:x", b"base:allocation"])))
    [(cid, name)] = ctx_replies(out, C.OPT_SET_META_CONTEXT)
    assert name == b"base:allocation"
    out, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert outcome.meta_contexts == {cid: "base:allocation"}
    assert outcome.structured and outcome.flags & C.FLAG_SEND_DF


def test_set_meta_context_applies_with_export_name_too():
    hs = structured()
    out, _ = hs.receive(opt(C.OPT_SET_META_CONTEXT, meta(b"disk", [b"base:allocation"])))
    [(cid, _)] = ctx_replies(out, C.OPT_SET_META_CONTEXT)
    _, outcome = hs.receive(opt(C.OPT_EXPORT_NAME, b"disk"))
    assert outcome.meta_contexts == {cid: "base:allocation"}


def test_set_meta_context_other_export_not_applied():
    hs = structured()
    hs.receive(opt(C.OPT_SET_META_CONTEXT, meta(b"ro", [b"base:allocation"])))
    _, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert outcome.meta_contexts == {}


@pytest.mark.parametrize("second", [[], [b"base:"], [b"qemu:x"], [b"base:nosuch"]])
def test_set_meta_context_replaces_the_set(second):
    hs = structured()
    hs.receive(opt(C.OPT_SET_META_CONTEXT, meta(b"disk", [b"base:allocation"])))
    out, _ = hs.receive(opt(C.OPT_SET_META_CONTEXT, meta(b"disk", second)))
    assert ctx_replies(out, C.OPT_SET_META_CONTEXT) == []        # selecting nothing: just ACK
    _, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert outcome.meta_contexts == {}


def test_set_meta_context_failed_set_clears_selection():
    hs = structured()
    hs.receive(opt(C.OPT_SET_META_CONTEXT, meta(b"disk", [b"base:allocation"])))
    expect_single(hs, C.OPT_SET_META_CONTEXT, meta(b"nosuch", [b"base:allocation"]),
                  C.REP_ERR_UNKNOWN)
    _, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert outcome.meta_contexts == {}


def test_list_meta_context_does_not_select():
    hs = structured()
    hs.receive(opt(C.OPT_LIST_META_CONTEXT, meta(b"disk", [b"base:allocation"])))
    _, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert outcome.meta_contexts == {}


# ---- STARTTLS, EXTENDED_HEADERS, unknown options ----------------------------------------
def test_starttls_policy():
    hs = started()
    expect_single(hs, C.OPT_STARTTLS, b"", C.REP_ERR_POLICY)
    expect_single(hs, C.OPT_STARTTLS, b"data", C.REP_ERR_INVALID)
    assert isinstance(hs.receive(opt(C.OPT_GO, info_go(b"disk")))[1], Negotiated)


@pytest.mark.parametrize("o,data", [
    (C.OPT_EXTENDED_HEADERS, b""),
    (C.OPT_PEEK_EXPORT, b""),
    (12, b""),
    (0, b"abc"),
    (0x7FFFFFFF, bytes(65536)),
    (0xFFFFFFFF, b"\xff" * 100),
])
def test_unknown_options_unsup_and_negotiation_continues(o, data):
    hs = structured()
    payload = expect_single(hs, o, data, C.REP_ERR_UNSUP)
    assert len(payload) <= C.MAX_STRING
    out, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert isinstance(outcome, Negotiated) and outcome.structured


def test_huge_option_length_closes_rather_than_buffering():
    hs = started()
    out, outcome = hs.receive(IHAVEOPT + struct.pack(">II", 42, 0xFFFFFFFF) + b"x" * 100)
    assert out == b"" and isinstance(outcome, Closed)


@pytest.mark.parametrize("magic", [b"IHAVEOPX", bytes(8), b"NBDMAGIC"])
def test_bad_option_magic_closes(magic):
    hs = started()
    out, outcome = hs.receive(opt(C.OPT_LIST) + magic + struct.pack(">II", C.OPT_LIST, 0))
    assert isinstance(outcome, Closed)
    assert parse(out)[-1] == (C.OPT_LIST, C.REP_ACK, b"")   # replies before it still sent


# ---- byte-by-byte delivery -----------------------------------------------------------------
SCRIPT = (struct.pack(">I", 3)
          + opt(C.OPT_EXTENDED_HEADERS)
          + opt(C.OPT_LIST)
          + opt(C.OPT_LIST, b"x")
          + opt(999, b"unknown option data")
          + opt(C.OPT_STARTTLS)
          + opt(C.OPT_STRUCTURED_REPLY)
          + opt(C.OPT_LIST_META_CONTEXT, meta(b"disk", [b"base:", b"qemu:dirty-bitmap:x"]))
          + opt(C.OPT_SET_META_CONTEXT, meta(b"disk", [b"base:allocation"]))
          + opt(C.OPT_INFO, info_go(b"disk", [C.INFO_NAME, C.INFO_BLOCK_SIZE]))
          + opt(C.OPT_INFO, info_go(b"disk", namelen=9))
          + opt(C.OPT_GO, info_go(b"disk", [C.INFO_DESCRIPTION])))


def test_split_byte_by_byte_same_as_whole():
    whole_out, whole = make().receive(SCRIPT)
    assert isinstance(whole, Negotiated)
    hs = make()
    outs, outcome = [], None
    for i in range(len(SCRIPT)):
        o, outcome = hs.receive(SCRIPT[i:i + 1])
        outs.append(o)
        if i < len(SCRIPT) - 1:
            assert outcome is None, i
    assert b"".join(outs) == whole_out
    assert isinstance(outcome, Negotiated)
    assert (outcome.export, outcome.flags, outcome.structured, outcome.meta_contexts, outcome.leftover) \
        == (whole.export, whole.flags, whole.structured, whole.meta_contexts, b"")
    types = [(o, t) for o, t, _ in parse(whole_out)]
    assert types == [
        (C.OPT_EXTENDED_HEADERS, C.REP_ERR_UNSUP),
        (C.OPT_LIST, C.REP_SERVER), (C.OPT_LIST, C.REP_SERVER), (C.OPT_LIST, C.REP_ACK),
        (C.OPT_LIST, C.REP_ERR_INVALID),
        (999, C.REP_ERR_UNSUP),
        (C.OPT_STARTTLS, C.REP_ERR_POLICY),
        (C.OPT_STRUCTURED_REPLY, C.REP_ACK),
        (C.OPT_LIST_META_CONTEXT, C.REP_META_CONTEXT), (C.OPT_LIST_META_CONTEXT, C.REP_ACK),
        (C.OPT_SET_META_CONTEXT, C.REP_META_CONTEXT), (C.OPT_SET_META_CONTEXT, C.REP_ACK),
        (C.OPT_INFO, C.REP_INFO), (C.OPT_INFO, C.REP_INFO), (C.OPT_INFO, C.REP_INFO),
        (C.OPT_INFO, C.REP_ACK),
        (C.OPT_INFO, C.REP_ERR_INVALID),
        (C.OPT_GO, C.REP_INFO), (C.OPT_GO, C.REP_INFO), (C.OPT_GO, C.REP_ACK),
    ]
    assert whole.meta_contexts and list(whole.meta_contexts.values()) == ["base:allocation"]


@pytest.mark.parametrize("cut", range(1, 28))
def test_split_at_every_point_of_an_info_option(cut):
    msg = opt(C.OPT_INFO, info_go(b"disk", [C.INFO_NAME]))
    assert len(msg) == 28
    hs = started()
    a, oa = hs.receive(msg[:cut])
    assert (a, oa) == (b"", None)
    b, ob = hs.receive(msg[cut:])
    assert ob is None and parse(b)[-1] == (C.OPT_INFO, C.REP_ACK, b"")


def test_error_replies_have_error_bit_and_text():
    for t in (C.REP_ERR_UNSUP, C.REP_ERR_POLICY, C.REP_ERR_INVALID, C.REP_ERR_UNKNOWN,
              C.REP_ERR_SHUTDOWN, C.REP_ERR_TOO_BIG):
        assert t & (1 << 31)
    assert C.REP_ERR_UNSUP == 0x80000001 and C.REP_ERR_TOO_BIG == 0x80000009
    assert (C.REP_ACK, C.REP_SERVER, C.REP_INFO, C.REP_META_CONTEXT) == (1, 2, 3, 4)


@pytest.mark.parametrize("set_name,go_name", [(b"", b""), (b"", b"disk"), (b"disk", b"")])
def test_set_meta_context_default_export_name_applies(set_name, go_name):
    """The empty name selects the default export: SET_META_CONTEXT and GO that name the
    same export (whatever spelling) must keep the selection (qemu/nbdinfo use "")."""
    hs = Handshake(lambda n: DISK if n in ("", "disk") else None, lambda: [DISK])
    hs.receive(struct.pack(">I", 3) + opt(C.OPT_STRUCTURED_REPLY))
    out, _ = hs.receive(opt(C.OPT_SET_META_CONTEXT, meta(set_name, [b"base:allocation"])))
    [(cid, _)] = ctx_replies(out, C.OPT_SET_META_CONTEXT)
    _, outcome = hs.receive(opt(C.OPT_GO, info_go(go_name)))
    assert outcome.meta_contexts == {cid: "base:allocation"}


@pytest.mark.parametrize("o,data", [
    (C.OPT_INFO, info_go("é".encode() * 2048)),
    (C.OPT_GO, info_go("€".encode() * 1365)),
])
def test_error_message_stays_valid_utf8_when_capped(o, data):
    """Error strings MUST be UTF-8 (proto.md); capping at 4096 bytes must not split
    a multi-byte character of a long export name echoed in the message."""
    hs = started()
    payload = expect_single(hs, o, data, C.REP_ERR_UNKNOWN)
    assert len(payload) <= C.MAX_STRING
    payload.decode("utf-8")


# ---- contexts an export offers beyond base:allocation -----------------------------------------
EXTRA = ["vsand:changed:s1", "vsand:changed:s2"]


def with_contexts() -> Handshake:
    return structured(contexts=lambda name: EXTRA if name == "disk" else [])


@pytest.mark.parametrize("queries,expected", [
    ([], [b"base:allocation", b"vsand:changed:s1", b"vsand:changed:s2"]),
    ([b"vsand:changed:"], [b"vsand:changed:s1", b"vsand:changed:s2"]),
    ([b"vsand:"], [b"vsand:changed:s1", b"vsand:changed:s2"]),
    ([b"vsand:changed:s2"], [b"vsand:changed:s2"]),
    ([b"vsand:changed:s", b"vsand:changed", b"vsand:changed:nosuch", b"qemu:"], []),
    ([b"vsand:changed:s2", b"base:"], [b"base:allocation", b"vsand:changed:s2"]),
])
def test_list_offered_contexts(queries, expected):
    hs = with_contexts()
    got = ctx_replies(hs.receive(opt(C.OPT_LIST_META_CONTEXT, meta(b"disk", queries)))[0],
                      C.OPT_LIST_META_CONTEXT)
    assert [n for _, n in got] == expected and all(i == 0 for i, _ in got)
    got = ctx_replies(hs.receive(opt(C.OPT_LIST_META_CONTEXT, meta(b"ro", queries)))[0],
                      C.OPT_LIST_META_CONTEXT)
    assert [n for _, n in got] == [n for n in expected if n.startswith(b"base:")]


def test_set_offered_contexts_exact_names_unique_ids():
    hs = with_contexts()
    out, _ = hs.receive(opt(C.OPT_SET_META_CONTEXT, meta(b"disk", [
        b"vsand:changed:s2", b"vsand:changed:", b"vsand:", b"vsand:changed:nosuch", b"base:allocation"])))
    got = ctx_replies(out, C.OPT_SET_META_CONTEXT)
    assert [n for _, n in got] == [b"base:allocation", b"vsand:changed:s2"]
    assert len({i for i, _ in got}) == 2 and 0 not in {i for i, _ in got}
    _, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert outcome.meta_contexts == {i: n.decode() for i, n in got}
