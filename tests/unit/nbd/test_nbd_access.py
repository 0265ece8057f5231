"""The handshake's access callable (vsand/nbd/handshake.py): a refused export is
left out of LIST, INFO/GO and the meta context options get ERR_POLICY with the
reason (a missing export: ERR_UNKNOWN), EXPORT_NAME closes; under tls "on"
before TLS, a refusal a certificate may lift gets ERR_TLS_REQD; a read-only
verdict sets READ_ONLY; the callable is asked at each decision (a certificate
learned mid-handshake counts); contexts the client may not see are never
selected."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from vsand.nbd import constants as C
from vsand.nbd.handshake import Closed, Negotiated, NeedsTLS

from test_nbd_handshake import BASE_FLAGS, DISK, RO, info_go, meta, opt, parse, rep, started


class Policy:
    """Refuses export "disk" unless ``names`` holds "ok"; "ro" for "reader"."""

    def __init__(self):
        self.names = frozenset()
        self.calls = 0

    def __call__(self, exp):
        self.calls += 1
        if exp.name == "disk" and "ok" not in self.names:
            return "no verified client certificate"
        if "reader" in self.names:
            return dataclasses.replace(exp, read_only=True)
        return exp


def names_listed(out: bytes) -> list[str]:
    res = []
    for o, t, data in parse(out):
        if t == C.REP_SERVER:
            (n,) = struct.unpack_from(">I", data)
            res.append(data[4:4 + n].decode())
    return res


def test_list_leaves_refused_exports_out():
    p = Policy()
    hs = started(access=p)
    out, outcome = hs.receive(opt(C.OPT_LIST))
    assert outcome is None and names_listed(out) == ["ro"]
    assert parse(out)[-1][:2] == (C.OPT_LIST, C.REP_ACK)
    assert hs.denied == []                  # listing is not a request: nothing to log
    p.names = frozenset({"ok"})             # e.g. after STARTTLS with a certificate
    out, _ = hs.receive(opt(C.OPT_LIST))
    assert names_listed(out) == ["disk", "ro"]


def test_info_and_go_answer_a_refused_export_like_a_missing_one():
    p = Policy()
    hs = started(access=p)
    for o in (C.OPT_INFO, C.OPT_GO):
        out, outcome = hs.receive(opt(o, info_go(b"disk")))
        assert outcome is None
        [(ro, rt, msg)] = parse(out)
        assert (ro, rt, msg) == (o, C.REP_ERR_POLICY, b"no verified client certificate")
        out, _ = hs.receive(opt(o, info_go(b"nope")))
        assert parse(out) == [(o, C.REP_ERR_UNKNOWN, b"no export named 'nope'")]
    # the reason is kept for the log, once per export; the policy is asked about real ones only
    assert hs.denied == [("disk", "no verified client certificate")]
    # the same connection, the names changed: the next GO is allowed
    p.names = frozenset({"ok"})
    out, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert isinstance(outcome, Negotiated) and outcome.export == DISK
    assert parse(out)[-1][:2] == (C.OPT_GO, C.REP_ACK)


def test_export_name_refused_closes():
    hs = started(access=Policy())
    out, outcome = hs.receive(opt(C.OPT_EXPORT_NAME, b"disk"))
    assert out == b"" and isinstance(outcome, Closed) and "certificate" in outcome.reason
    assert hs.denied == [("disk", "no verified client certificate")]


def test_meta_context_options_refused():
    hs = started(access=Policy())
    hs.receive(opt(C.OPT_STRUCTURED_REPLY))
    for o in (C.OPT_LIST_META_CONTEXT, C.OPT_SET_META_CONTEXT):
        out, outcome = hs.receive(opt(o, meta(b"disk", [b"base:allocation"])))
        assert outcome is None and parse(out) == [(o, C.REP_ERR_POLICY, b"no verified client certificate")]
        out, _ = hs.receive(opt(o, meta(b"nope", [b"base:allocation"])))
        assert parse(out) == [(o, C.REP_ERR_UNKNOWN, b"no export named 'nope'")]


def needs_tls(exp):
    return NeedsTLS("no verified client certificate") if exp.name == "disk" else exp


@pytest.mark.parametrize("o", [C.OPT_INFO, C.OPT_GO])
def test_selective_tls_asks_for_tls_before_it_only(o):
    hs = started(access=needs_tls, tls="on")
    [(ro, rt, msg)] = parse(hs.receive(opt(o, info_go(b"disk")))[0])
    assert (ro, rt) == (o, C.REP_ERR_TLS_REQD) and b"STARTTLS" in msg
    assert parse(hs.receive(opt(o, info_go(b"nope")))[0])[0][1] == C.REP_ERR_UNKNOWN
    hs.tls_started()            # inside TLS, never ERR_TLS_REQD: a policy refusal
    assert parse(hs.receive(opt(o, info_go(b"disk")))[0]) == [(o, C.REP_ERR_POLICY, b"no verified client certificate")]
    # without TLS on offer, or for a refusal no certificate lifts: a policy refusal
    for tls, policy in (("off", needs_tls), ("on", Policy())):
        hs = started(access=policy, tls=tls)
        assert parse(hs.receive(opt(o, info_go(b"disk")))[0])[0][1] == C.REP_ERR_POLICY


def test_contexts_rechecked_at_go():
    """A context offered at SET and hidden before GO is not selected (the server
    filters contexts per client; a rule may change in between)."""
    shown = ["vsand:changed:a", "vsand:changed:b"]
    hs = started(contexts=lambda name: list(shown))
    hs.receive(opt(C.OPT_STRUCTURED_REPLY))
    out, _ = hs.receive(opt(C.OPT_SET_META_CONTEXT, meta(b"disk", [b"base:allocation", b"vsand:changed:a",
                                                                   b"vsand:changed:b"])))
    assert [t for _, t, _ in parse(out)] == [C.REP_META_CONTEXT] * 3 + [C.REP_ACK]
    shown.remove("vsand:changed:b")
    _, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert isinstance(outcome, Negotiated)
    assert sorted(outcome.meta_contexts.values()) == ["base:allocation", "vsand:changed:a"]


def test_read_only_verdict_sets_the_flag_everywhere():
    p = Policy()
    p.names = frozenset({"ok", "reader"})
    hs = started(access=p)
    out, _ = hs.receive(opt(C.OPT_INFO, info_go(b"disk")))
    info = parse(out)[0]
    assert info[:2] == (C.OPT_INFO, C.REP_INFO)
    assert struct.unpack(">HQH", info[2]) == (C.INFO_EXPORT, DISK.size, BASE_FLAGS | C.FLAG_READ_ONLY)
    out, outcome = hs.receive(opt(C.OPT_GO, info_go(b"disk")))
    assert isinstance(outcome, Negotiated) and outcome.flags & C.FLAG_READ_ONLY
    assert outcome.export.read_only
    hs = started(access=p, cflags=C.FLAG_C_FIXED_NEWSTYLE)
    out, outcome = hs.receive(opt(C.OPT_EXPORT_NAME, b"disk"))
    assert struct.unpack_from(">QH", out) == (DISK.size, BASE_FLAGS | C.FLAG_READ_ONLY)


def test_default_access_serves_everything():
    hs = started()
    out, outcome = hs.receive(opt(C.OPT_EXPORT_NAME, b"ro"))
    assert isinstance(outcome, Negotiated) and outcome.export == RO


def test_refused_listener_client_gets_err_policy_for_all_but_abort():
    hs = started(refused="address 127.0.0.1 is not allowed on this listener (nbd_allow)")
    for o, data in ((C.OPT_LIST, b""), (C.OPT_INFO, info_go(b"disk")), (C.OPT_GO, info_go(b"disk")),
                    (C.OPT_STRUCTURED_REPLY, b""), (C.OPT_STARTTLS, b""),
                    (C.OPT_LIST_META_CONTEXT, meta(b"disk")), (99, b"xyz")):
        out, outcome = hs.receive(opt(o, data))
        assert outcome is None
        [(ro, rt, msg)] = parse(out)
        assert (ro, rt) == (o, C.REP_ERR_POLICY) and b"nbd_allow" in msg
    out, outcome = hs.receive(opt(C.OPT_EXPORT_NAME, b"disk"))
    assert out == b"" and isinstance(outcome, Closed)
    hs = started(refused="x")
    out, outcome = hs.receive(opt(C.OPT_ABORT))
    assert out == rep(C.OPT_ABORT, C.REP_ACK) and isinstance(outcome, Closed)
