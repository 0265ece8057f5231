"""Per-LUN access rules keyed on TLS client certificate names, end to end: a real
daemon with ``tls = require`` and ``tls_verify_peer on``, certificates from a test
CA (tests/tlskit.py), and libnbd clients (nbdinfo, nbdsh) presenting them.

- ``--allow-cert``: the named client lists and uses the LUN; another verified
  client does not see it in LIST and its GO gets ERR_POLICY with the reason (logged too).
- ``--readonly-for cert:NAME``: that client reads, its writes get EPERM; another
  client writes.
- Names are matched on any of the certificate's names (CN, DNS or URI SAN).
- ``tls = on`` (SELECTIVETLS), raw probes: before TLS, INFO/GO for an
  ``--allow-cert`` export get ERR_TLS_REQD (the client is told to upgrade); inside
  TLS a certificate that does not match gets ERR_POLICY."""

from __future__ import annotations

import os
import textwrap

import pytest

from daemonkit import SYS_PY, Daemon, need, run
from test_vsanctl import js
from test_access_control import wait_log
from test_tls_clients import Raw, info_data
from tlskit import CA, client_dir
from vsand.nbd import constants as C

MiB = 1 << 20
SYS_ENV = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("acl-pki")
    ca = CA(root / "ca")
    cert, key = ca.server()
    pairs = {"alice": ca.client("alice"), "bob": ca.client("bob")}
    return {"ca": ca, "cert": cert, "key": key, "pairs": pairs,
            **{who: client_dir(root / who, ca, pair) for who, pair in pairs.items()}}


@pytest.fixture(scope="module")
def d(tmp_path_factory, pki):
    d = Daemon(tmp_path_factory.mktemp("acl-tls"), drives=4, drive_size="256M",
               extra=["--tls", "require", "--tls-cert", pki["cert"], "--tls-key", pki["key"],
                      "--tls-ca", pki["ca"].cert, "--tls-verify-peer", "on"]).start()
    for name in ("alices", "shared"):
        d.ctl("lun.create", name=name, size=16 * MiB, raid=0)
    # alice by her CN; bob only through a SAN entry of his certificate
    js(d, "lun", "set", "alices", "--allow-cert", "alice,vsand://carol")
    js(d, "lun", "set", "shared", "--readonly-for", "cert:bob.example")
    yield d
    assert d.stop() == 0, d.read_log()


def sh(d, pki, who: str, body: str, check: bool = True):
    need("nbdsh")
    if run([SYS_PY, "-c", "import nbd"], check=False).returncode != 0:
        pytest.skip("the libnbd Python binding (python3-libnbd) is not installed for /usr/bin/python3")
    script = textwrap.dedent(f"""
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_certificates({pki[who]!r})
    """) + textwrap.dedent(body)
    return run(["nbdsh", "-c", script], env=SYS_ENV, check=check)


def listed(d, pki, who: str) -> list[str]:
    out = sh(d, pki, who, f"""
        h.set_opt_mode(True)
        h.connect_tcp("127.0.0.1", "{d.port}")
        h.opt_list(lambda name, desc: print("EXPORT", name))
        h.opt_abort()
    """).stdout
    return sorted(line.split()[1] for line in out.splitlines() if line.startswith("EXPORT "))


def test_allow_cert_lists_and_serves_only_the_named_client(d, pki):
    assert listed(d, pki, "alice") == ["alices", "shared"]
    assert listed(d, pki, "bob") == ["shared"]
    sh(d, pki, "alice", f"""
        h.set_export_name("alices")
        h.connect_tcp("127.0.0.1", "{d.port}")
        h.pwrite(b"A" * 4096, 0)
        h.flush()
        assert h.pread(4096, 0) == b"A" * 4096
    """)
    r = sh(d, pki, "bob", f"""
        h.set_export_name("alices")
        try:
            h.connect_tcp("127.0.0.1", "{d.port}")
        except nbd.Error as e:
            print("REFUSED", e)
        else:
            raise SystemExit("bob was served alices")
    """)
    assert "REFUSED" in r.stdout, r.stdout
    log = d.read_log()
    assert "the client certificate is not allowed to use this export" in log, log[-3000:]


def test_readonly_for_a_certificate_name(d, pki):
    sh(d, pki, "alice", f"""
        h.set_export_name("shared")
        h.connect_tcp("127.0.0.1", "{d.port}")
        assert not h.is_read_only()
        h.pwrite(b"W" * 4096, 0)
        h.flush()
    """)
    sh(d, pki, "bob", f"""
        h.set_export_name("shared")
        h.set_strict_mode(0)            # send the write anyway: the server must refuse it
        h.connect_tcp("127.0.0.1", "{d.port}")
        assert h.is_read_only()
        assert h.pread(4096, 0) == b"W" * 4096
        try:
            h.pwrite(b"B" * 4096, 0)
        except nbd.Error as e:
            assert "EPERM" in str(e), e
        else:
            raise SystemExit("bob's write was accepted")
        assert h.pread(4096, 0) == b"W" * 4096
    """)


@pytest.fixture(scope="module")
def selective(tmp_path_factory, pki):
    """tls = on: plain clients served, STARTTLS clients must show a certificate."""
    d = Daemon(tmp_path_factory.mktemp("acl-tls-on"), drives=4, drive_size="256M",
               extra=["--tls", "on", "--tls-cert", pki["cert"], "--tls-key", pki["key"],
                      "--tls-ca", pki["ca"].cert, "--tls-verify-peer", "on"]).start()
    d.ctl("lun.create", name="guarded", size=16 * MiB, raid=0)
    d.ctl("lun.create", name="plain", size=16 * MiB, raid=0)
    js(d, "lun", "set", "guarded", "--allow-cert", "alice")
    yield d
    assert d.stop() == 0, d.read_log()


@pytest.mark.parametrize("o", [C.OPT_INFO, C.OPT_GO])
def test_selective_tls_asks_plain_clients_to_upgrade(selective, pki, o):
    d = selective
    r = Raw(d)
    assert r.ask(o, info_data("guarded")) == [C.REP_ERR_TLS_REQD]    # before TLS: upgrade
    assert r.ask(o, info_data("nosuch")) == [C.REP_ERR_UNKNOWN]
    assert r.ask(C.OPT_INFO, info_data("plain"))[-1] == C.REP_ACK     # plain ones served
    r.starttls(pki, pki["pairs"]["bob"])
    # inside TLS never ERR_TLS_REQD; a certificate that does not match: a policy refusal
    assert r.ask(o, info_data("guarded")) == [C.REP_ERR_POLICY]
    assert r.ask(o, info_data("nosuch")) == [C.REP_ERR_UNKNOWN]
    r = Raw(d)
    r.starttls(pki, pki["pairs"]["alice"])
    assert r.ask(o, info_data("guarded"))[-1] == C.REP_ACK
    wait_log(d, "refused export guarded: the client certificate is not allowed")  # the real reason
