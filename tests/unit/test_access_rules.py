"""The access policy (vsand/access.py): the TCP listener's allowlist and an LD's
rules, decided from a client's address and verified certificate names."""

from __future__ import annotations

from ipaddress import ip_address
from socket import AF_INET, AF_INET6, AF_UNIX

import pytest

from vsand.access import ATTRS, Allowlist, Client, Rules, address_of, network, rule
from vsand.config import load
from vsand.disk.role import ACCESS_ATTRS
from vsand.nbd.handshake import Export, NeedsTLS
from vsand.server.nbd_server import NbdServer

V4 = ip_address("127.0.0.1")
V4B = ip_address("127.0.0.2")
V6 = ip_address("::1")
UNIX = Client(None)


def test_allowlist_empty_admits_everyone():
    assert Allowlist().admits(Client(V4)) and Allowlist([]).admits(Client(V6))


@pytest.mark.parametrize("specs, addr, ok", [
    (["127.0.0.1/32"], "127.0.0.1", True),
    (["127.0.0.1/32"], "127.0.0.2", False),
    (["127.0.0.2"], "127.0.0.2", True),              # a bare address is a /32
    (["127.0.0.0/8"], "127.9.8.7", True),
    (["10.0.0.0/8"], "127.0.0.1", False),
    (["::1"], "::1", True),                          # IPv6 loopback
    (["::1"], "127.0.0.1", False),                   # another family never matches
    (["127.0.0.1/32"], "::1", False),
    (["fd00::/8"], "fd12::5", True),
    (["127.0.0.2/32", "::1"], "::1", True),
    (["127.0.0.2/32", "::1"], "127.0.0.3", False),
])
def test_allowlist_addresses_and_networks(specs, addr, ok):
    assert Allowlist(specs).admits(Client(ip_address(addr))) is ok


def test_allowlist_leaves_unix_clients_to_file_permissions():
    assert Allowlist(["127.0.0.2/32"]).admits(UNIX)


@pytest.mark.parametrize("bad", ["", " ", "localhost", "127.0.0.1/33", "10.0.0.1/8", "::1/129",
                                 "1.2.3", "127.0.0.1/", None, 5])
def test_bad_networks_are_refused_with_the_text(bad):
    with pytest.raises(ValueError) as e:
        network(bad)
    assert repr(bad) in str(e.value) or "expected" in str(e.value)
    with pytest.raises(ValueError):
        Allowlist(["127.0.0.1", bad])


def test_peer_addresses():
    assert address_of(("127.0.0.2", 4000), AF_INET) == V4B
    assert address_of(("::1", 4000, 0, 0), AF_INET6) == V6
    # an IPv4 client of a dual-stack listener is judged by its IPv4 address
    assert address_of(("::ffff:127.0.0.2", 4000, 0, 0), AF_INET6) == V4B
    assert address_of(("fe80::1%lo", 4000, 0, 1), AF_INET6) == ip_address("fe80::1")
    assert address_of("/run/vsand/nbd.sock", AF_UNIX) is None and address_of("", AF_UNIX) is None
    assert address_of(None, AF_UNIX) is None


@pytest.mark.parametrize("peername", ["", "/run/vsand/nbd.sock", None, ("no-address", 1), (5,)])
@pytest.mark.parametrize("family", [AF_INET, AF_INET6, None])
def test_tcp_peer_of_unknown_address_is_refused_not_exempt(peername, family):
    # a TCP peer (or a socket of unknown family) is judged by its address or refused,
    # never taken for a UNIX socket client by the form of its peername
    with pytest.raises(ValueError, match="the peer's address is unknown"):
        address_of(peername, family)


@pytest.mark.parametrize("spec, net", [
    ("::ffff:127.0.0.2", "127.0.0.2/32"),
    ("::ffff:127.0.0.0/104", "127.0.0.0/8"),
    ("::ffff:0:0/96", "0.0.0.0/0"),                  # every IPv4 client
    ("::ffff:7f00:2", "127.0.0.2/32"),
])
def test_ipv4_mapped_entries_are_their_ipv4_network(spec, net):
    # address_of makes a mapped client address IPv4: a mapped entry must be IPv4 too
    assert str(network(spec)) == net
    assert Allowlist([spec]).admits(Client(address_of(("::ffff:127.0.0.2", 1, 0, 0), AF_INET6)))
    assert Allowlist([spec]).admits(Client(V4B))
    assert rule("readonly_for", [spec]) == [net]
    assert Rules.of({"readonly_for": [spec]}).check(Client(V4B)) == (None, True)
    assert Rules.of({"readonly_for": [spec]}).check(Client(V6)) == (None, False)
    assert not Allowlist(["::ffff:127.0.0.1"]).admits(Client(V4B))


def test_ipv6_networks_beside_the_mapped_range_stay_ipv6():
    with pytest.raises(ValueError, match="host bits"):
        network("::ffff:0:0/95")
    assert str(network("::/0")) == "::/0" and str(network("64:ff9b::/96")) == "64:ff9b::/96"
    assert not Allowlist(["::/0"]).admits(Client(V4B))


def test_no_rules_serve_everyone_read_write():
    for c in (Client(V4), Client(V6, frozenset({"a"})), UNIX):
        assert Rules.of({}).check(c) == (None, False)
    assert Rules.of({"allow_cert": [], "readonly_for": []}) == Rules()


def test_allow_cert_needs_one_of_the_names():
    r = Rules.of({"allow_cert": ["backup.example", "db1"]})
    assert r.check(Client(V4, frozenset({"db1"}))) == (None, False)
    assert r.check(Client(V4, frozenset({"other", "backup.example"}))) == (None, False)
    why, _ = r.check(Client(V4, frozenset({"db2"})))
    assert why and "not allowed" in why
    why, _ = r.check(Client(V4))                       # plain TCP: no certificate
    assert why and "no verified client certificate" in why
    assert r.check(Client(V4, frozenset({"DB1"})))[0]  # names compare exactly
    assert r.check(Client(V4, frozenset({"db"})))[0]   # no prefix matching


def test_empty_names_never_match():
    r = Rules.of({"allow_cert": ["db1"]})
    why, _ = r.check(Client(V4, frozenset({""})))
    assert why and "no verified client certificate" in why
    # an empty name cannot be made a rule either
    with pytest.raises(ValueError, match="empty"):
        rule("allow_cert", [""])
    with pytest.raises(ValueError, match="empty"):
        rule("readonly_for", ["cert:"])
    assert Rules.of({"readonly_for": ["cert:x"]}).check(Client(V4, frozenset({""}))) == (None, False)


def test_allow_cert_does_not_bind_unix_clients():
    assert Rules.of({"allow_cert": ["db1"]}).check(UNIX) == (None, False)


def test_readonly_for_addresses_networks_and_names():
    r = Rules.of({"readonly_for": rule("readonly_for", ["127.0.0.2", "10.1.0.0/16", "::1",
                                                        "cert:reporting"])})
    assert r.check(Client(V4B)) == (None, True)
    assert r.check(Client(ip_address("10.1.200.3"))) == (None, True)
    assert r.check(Client(V6)) == (None, True)
    assert r.check(Client(V4)) == (None, False)
    assert r.check(Client(V4, frozenset({"reporting"}))) == (None, True)
    assert r.check(Client(V4, frozenset({"reporting2"}))) == (None, False)
    assert r.check(UNIX) == (None, False)


def test_allow_cert_and_readonly_together():
    r = Rules.of({"allow_cert": ["a", "b"], "readonly_for": ["cert:b"]})
    assert r.check(Client(V4, frozenset({"a"}))) == (None, False)
    assert r.check(Client(V4, frozenset({"b"}))) == (None, True)
    assert r.check(Client(V4, frozenset({"c"})))[0] is not None


def test_rule_forms():
    assert rule("readonly_for", ["::1", "cert: abc ", "127.0.0.2", "127.0.0.2/32", "CERT:abc"]) == \
        ["127.0.0.2/32", "::1/128", "cert:abc"]
    assert rule("allow_cert", ["b", " a", "b"]) == ["a", "b"]
    assert rule("allow_cert", []) == [] and rule("readonly_for", []) == []
    for key, bad in (("allow_cert", ["a,b"]), ("allow_cert", ["a\nb"]), ("allow_cert", [3]),
                     ("allow_cert", "a"), ("readonly_for", ["300.0.0.1"]),
                     ("readonly_for", ["10.0.0.1/8"]), ("readonly_for", ["cert:a,b"])):
        with pytest.raises(ValueError):
            rule(key, bad)


def test_the_storage_layer_keeps_the_same_attributes():
    # disk/role.py cannot import access.py (layers); snapshots copy these keys
    assert ACCESS_ATTRS == ATTRS


# ---- where the policy meets the daemon: its config and the NBD server -------------------
def test_nbd_allow_flag_and_toml(tmp_path):
    assert load([]).nbd_allow == []
    assert load(["--nbd-allow", "::1", "--nbd-allow", "10.0.0.0/8"]).nbd_allow == ["::1", "10.0.0.0/8"]
    f = tmp_path / "v.toml"
    f.write_text('nbd_allow = ["127.0.0.2/32"]\n')
    assert load(["--config", str(f)]).nbd_allow == ["127.0.0.2/32"]
    assert load(["--config", str(f), "--nbd-allow", "::1"]).nbd_allow == ["::1"]   # the flag wins


class FakeExports:
    def __init__(self, attrs):
        self.attrs = attrs

    def rules(self, name):
        return Rules.of(self.attrs)

    def begin_flush(self):
        return None


def test_server_access_verdicts():
    exp = Export("db", 1 << 20)
    srv = NbdServer(FakeExports({"readonly_for": ["127.0.0.1/32"]}), io_threads=0)
    got = srv.access(exp, Client(V4))
    assert got == Export("db", 1 << 20, read_only=True)
    assert srv.access(exp, Client(V4B)) is exp
    srv = NbdServer(FakeExports({"allow_cert": ["db1"]}), io_threads=0)
    assert srv.access(exp, Client(V4, frozenset({"db1"}))) is exp
    assert "certificate" in srv.access(exp, Client(V4))


def test_unreadable_rules_refuse_never_serve(caplog):
    srv = NbdServer(FakeExports({"readonly_for": ["not a network"]}), io_threads=0)
    assert srv.access(Export("db", 1 << 20), Client(V4)) == "the export's access rules cannot be read"
    assert "unreadable access rules" in caplog.text


def test_server_refusal_names_the_address():
    srv = NbdServer(FakeExports({}), io_threads=0, allow=Allowlist(["127.0.0.2/32"]))
    assert srv.excluded(Client(V4)) == "address 127.0.0.1 is not allowed on this listener (nbd_allow)"
    assert srv.excluded(Client(V4B)) is None and srv.excluded(UNIX) is None
    assert NbdServer(FakeExports({}), io_threads=0).excluded(Client(V6)) is None


class FakeChain(FakeExports):
    """LDs of one sharing chain, each with its own rules."""

    def __init__(self, per_ld):
        self.per_ld = per_ld

    def rules(self, name):
        return Rules.of(self.per_ld.get(name, {}))

    def peers(self, name):
        return [n for n in self.per_ld if n != name]


def test_contexts_offered_only_for_lds_the_client_may_use():
    srv = NbdServer(FakeChain({"db": {}, "db-open": {}, "db-hidden": {"allow_cert": ["db1"]},
                               "db-bad": {"readonly_for": ["not a network"]}}), io_threads=0)
    every = ["vsand:changed:db-open", "vsand:changed:db-hidden", "vsand:changed:db-bad"]
    assert srv.contexts("db") == every                   # no client: what the export has
    assert srv.contexts("db", Client(V4)) == ["vsand:changed:db-open"]
    assert srv.contexts("db", Client(V4, frozenset({"db1"}))) == every[:2]
    assert srv.contexts("db", UNIX) == every[:2]         # UNIX: not bound; unreadable: never


class FakeTls:
    mode, context, verify_peer = "on", None, True

    def describe(self):
        return "TLS on"


def test_refusals_a_certificate_may_lift_are_marked():
    exp = Export("db", 1 << 20)
    srv = NbdServer(FakeExports({"allow_cert": ["db1"]}), io_threads=0, tls=FakeTls())
    assert isinstance(srv.access(exp, Client(V4)), NeedsTLS)
    assert not isinstance(srv.access(exp, Client(V4, frozenset({"db2"}))), NeedsTLS)   # has one
    FakeTls.verify_peer = False          # TLS would bring no certificate: nothing to ask for
    try:
        assert not isinstance(srv.access(exp, Client(V4)), NeedsTLS)
    finally:
        FakeTls.verify_peer = True
    srv = NbdServer(FakeExports({"allow_cert": ["db1"]}), io_threads=0)
    got = srv.access(exp, Client(V4))
    assert isinstance(got, str) and not isinstance(got, NeedsTLS)
