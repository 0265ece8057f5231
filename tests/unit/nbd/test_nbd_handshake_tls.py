"""STARTTLS in the sans-IO handshake (vsand/nbd/handshake.py) against NBD-NOTES
§1.12 and row O4: the three modes, the ACK and its StartTLS outcome, what is
forgotten once TLS is up, and what is never sent after it."""

from __future__ import annotations

import struct

import pytest

from vsand.nbd import constants as C
from vsand.nbd.handshake import Closed, Negotiated, StartTLS
from test_nbd_handshake import expect_single, info_go, meta, opt, parse, rep, started

EVERY_OTHER = [
    (C.OPT_LIST, b""),
    (C.OPT_INFO, info_go(b"disk")),
    (C.OPT_GO, info_go(b"disk")),
    (C.OPT_STRUCTURED_REPLY, b""),
    (C.OPT_LIST_META_CONTEXT, meta(b"disk", [b"base:"])),
    (C.OPT_SET_META_CONTEXT, meta(b"disk", [b"base:allocation"])),
    (C.OPT_EXTENDED_HEADERS, b""),
    (999, b"whatever"),
]


def starttls(hs) -> StartTLS:
    out, outcome = hs.receive(opt(C.OPT_STARTTLS))
    assert out == rep(C.OPT_STARTTLS, C.REP_ACK)
    assert isinstance(outcome, StartTLS) and outcome.leftover == b""
    return outcome


@pytest.mark.parametrize("o,data", EVERY_OTHER)
def test_require_refuses_every_option_before_tls(o, data):
    hs = started(tls="require")
    expect_single(hs, o, data, C.REP_ERR_TLS_REQD)
    assert not hs.structured and hs.meta == {}      # nothing took effect


def test_require_closes_export_name_before_tls():
    hs = started(tls="require")
    out, outcome = hs.receive(opt(C.OPT_EXPORT_NAME, b"disk"))
    assert out == b"" and isinstance(outcome, Closed) and "STARTTLS" in outcome.reason


def test_require_abort_is_still_acked():
    hs = started(tls="require")
    out, outcome = hs.receive(opt(C.OPT_ABORT))
    assert out == rep(C.OPT_ABORT, C.REP_ACK) and isinstance(outcome, Closed)


@pytest.mark.parametrize("mode", ["on", "require"])
def test_starttls_ack_then_everything_inside_tls(mode):
    hs = started(tls=mode)
    starttls(hs)
    hs.tls_started()
    [(o, t, payload)] = [r for r in parse(hs.receive(opt(C.OPT_LIST))[0]) if r[1] == C.REP_SERVER][:1]
    assert payload[4:8] == b"disk"
    out, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert isinstance(outcome, Negotiated) and outcome.export.name == "disk"
    assert C.REP_ERR_TLS_REQD not in [t for _, t, _ in parse(out)]


def test_on_serves_plain_too():
    hs = started(tls="on")
    [*_, (o, t, _)] = parse(hs.receive(opt(C.OPT_LIST))[0])
    assert (o, t) == (C.OPT_LIST, C.REP_ACK)
    _, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert isinstance(outcome, Negotiated)


def test_on_export_name_in_plain():
    hs = started(tls="on")
    out, outcome = hs.receive(opt(C.OPT_EXPORT_NAME, b"disk"))
    assert isinstance(outcome, Negotiated) and len(out) == 10


@pytest.mark.parametrize("mode", ["on", "require"])
def test_second_starttls_is_invalid(mode):
    hs = started(tls=mode)
    starttls(hs)
    hs.tls_started()
    expect_single(hs, C.OPT_STARTTLS, b"", C.REP_ERR_INVALID)
    assert isinstance(hs.receive(opt(C.OPT_GO, info_go(b"disk")))[1], Negotiated)


@pytest.mark.parametrize("mode", ["on", "require"])
def test_starttls_with_data_is_invalid_and_no_upgrade(mode):
    hs = started(tls=mode)
    expect_single(hs, C.OPT_STARTTLS, b"x", C.REP_ERR_INVALID)
    starttls(hs)       # a correct one afterwards still works


def test_off_is_policy():
    hs = started(tls="off")
    expect_single(hs, C.OPT_STARTTLS, b"", C.REP_ERR_POLICY)


def test_tls_forgets_plain_negotiation():
    hs = started(tls="on")
    hs.receive(opt(C.OPT_STRUCTURED_REPLY))
    hs.receive(opt(C.OPT_SET_META_CONTEXT, meta(b"disk", [b"base:allocation"])))
    assert hs.structured and hs.meta
    starttls(hs)
    hs.tls_started()
    assert not hs.structured and hs.meta == {} and hs.meta_export is None
    # meta contexts need structured replies again, and GO has neither
    expect_single(hs, C.OPT_SET_META_CONTEXT, meta(b"disk", [b"base:allocation"]), C.REP_ERR_INVALID)
    _, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert not outcome.structured and outcome.meta_contexts == {}
    assert not outcome.flags & C.FLAG_SEND_DF


def test_bytes_after_starttls_come_back_as_leftover():
    hs = started(tls="require")
    out, outcome = hs.receive(opt(C.OPT_STARTTLS) + b"\x16\x03\x01 not waiting")
    assert out == rep(C.OPT_STARTTLS, C.REP_ACK)
    assert isinstance(outcome, StartTLS) and outcome.leftover == b"\x16\x03\x01 not waiting"
    assert not hs.buf


def test_never_tls_reqd_after_tls_even_for_unknown_exports():
    hs = started(tls="require")
    starttls(hs)
    hs.tls_started()
    for o, data in EVERY_OTHER:
        out, _ = hs.receive(opt(o, data))
        assert C.REP_ERR_TLS_REQD not in [t for _, t, _ in parse(out)], o
        if o == C.OPT_GO:
            break
    hs = started(tls="require")
    starttls(hs)
    hs.tls_started()
    expect_single(hs, C.OPT_GO, info_go(b"nosuch"), C.REP_ERR_UNKNOWN)


def test_refused_connection_refuses_starttls_too():
    hs = started(tls="require", refused="too many connections")
    expect_single(hs, C.OPT_STARTTLS, b"", C.REP_ERR_POLICY)


def test_byte_by_byte_starttls_outcome():
    hs = started(tls="require")
    msg = opt(C.OPT_STARTTLS)
    for i in range(len(msg) - 1):
        assert hs.receive(msg[i:i + 1]) == (b"", None)
    out, outcome = hs.receive(msg[-1:])
    assert out == rep(C.OPT_STARTTLS, C.REP_ACK) and isinstance(outcome, StartTLS)
    assert struct.unpack(">I", out[12:16])[0] == C.REP_ACK
