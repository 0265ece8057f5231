"""vsand/tls.py (the server's TLS settings from the config) and peer.cert_names,
with certificates from a test CA and TLS handshakes run in memory (ssl.MemoryBIO)."""

from __future__ import annotations

import os
import ssl

import pytest

from tlskit import CA
from vsand.config import load as load_config
from vsand.peer import cert_names
from vsand.tls import TlsError, load


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca = CA(root / "ca")
    other = CA(root / "other", "another CA")
    return {"ca": ca, "server": ca.server(), "client": ca.client(), "stranger": other.client("stranger")}


def handshake(server: ssl.SSLContext, client: ssl.SSLContext):
    """Runs a TLS handshake between the two contexts in memory; the server side's
    SSLObject (or the exception either side raised)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cs = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    ss = server.wrap_bio(s_in, s_out, server_side=True)
    done = {cs: False, ss: False}
    for _ in range(20):
        for obj in (cs, ss):
            if not done[obj]:
                try:
                    obj.do_handshake()
                    done[obj] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            cs.write(b"x")                 # TLS 1.3: the server verifies the client's
            s_in.write(c_out.read())       # certificate before its first read
            ss.read(1)
            return ss
    raise AssertionError("handshake did not finish")


def client_ctx(ca: CA, cert=None, version=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca.cert)
    if cert:
        ctx.load_cert_chain(*cert)
    if version:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def test_off_needs_nothing():
    assert load("off", "", "", "", False) is None
    assert load("off", "/nonexistent", "", "", True) is None      # not looked at


def test_verified_client_names(pki):
    tls = load("require", *pki["server"], pki["ca"].cert, True)
    ss = handshake(tls.context, client_ctx(pki["ca"], pki["client"]))
    assert cert_names(ss.getpeercert()) == {"client1", "client1.example", "vsand://client1"}


def test_no_names_without_verification(pki):
    tls = load("on", *pki["server"], "", False)
    ss = handshake(tls.context, client_ctx(pki["ca"], pki["client"]))    # never asked for
    assert not ss.getpeercert() and cert_names(ss.getpeercert()) == frozenset()
    assert cert_names({}) == frozenset()        # what getpeercert() gives for an unverified one


@pytest.mark.parametrize("who", [None, "stranger"])
def test_verify_peer_refuses_missing_or_foreign_client_cert(pki, who):
    tls = load("require", *pki["server"], pki["ca"].cert, True)
    with pytest.raises(ssl.SSLError):
        handshake(tls.context, client_ctx(pki["ca"], pki[who] if who else None))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused(pki):
    tls = load("on", *pki["server"], "", False)
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    ctx = client_ctx(pki["ca"])
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")       # this client would speak TLS 1.1
    try:
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except ValueError:
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises(ssl.SSLError) as e:
        handshake(tls.context, ctx)
    assert "protocol" in str(e.value).lower(), e.value


def test_refusals_are_one_line(pki, tmp_path):
    cert, key = pki["server"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    unreadable = tmp_path / "secret.pem"
    unreadable.write_text(open(key).read())
    os.chmod(unreadable, 0)
    other_key = pki["client"][1]
    cases = [
        (("on", "", "", "", False), "tls on needs a server certificate"),
        (("require", cert, key, "", True), "tls_verify_peer on needs tls_ca"),
        (("on", "/nonexistent/cert.pem", key, "", False), "tls_cert /nonexistent/cert.pem: no such file"),
        (("on", cert, "/nonexistent/key.pem", "", False), "tls_key /nonexistent/key.pem: no such file"),
        (("on", cert, key, "/nonexistent/ca.pem", True), "tls_ca /nonexistent/ca.pem: no such file"),
        (("on", str(garbage), key, "", False), f"tls_cert {garbage}"),
        (("on", cert, other_key, "", False), "key values mismatch"),
        (("on", cert, "", "", False), f"tls_cert {cert}"),          # no key in the cert file
        (("on", cert, key, str(garbage), True), f"tls_ca {garbage}"),
        (("maybe", cert, key, "", False), "tls: expected one of off, on, require"),
    ]
    if os.geteuid() != 0:           # root reads any file
        cases.append((("on", cert, str(unreadable), "", False), "permission denied"))
    for args, want in cases:
        with pytest.raises(TlsError) as e:
            load(*args)
        assert want in e.value.message and "\n" not in e.value.message, (args, e.value.message)


def test_config_keys_and_flags(tmp_path):
    toml = tmp_path / "vsand.toml"
    toml.write_text('tls = "require"\ntls_cert = "/etc/vsand/tls/server-cert.pem"\n'
                    'tls_key = "/etc/vsand/tls/server-key.pem"\ntls_ca = "/etc/vsand/tls/ca-cert.pem"\n'
                    'tls_verify_peer = true\n')
    cfg = load_config(["--config", str(toml)])
    assert (cfg.tls, cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.tls_verify_peer) == (
        "require", "/etc/vsand/tls/server-cert.pem", "/etc/vsand/tls/server-key.pem",
        "/etc/vsand/tls/ca-cert.pem", True)
    cfg = load_config(["--config", str(toml), "--tls", "on", "--tls-verify-peer", "off",
                       "--tls-cert", "/c", "--tls-key", "/k", "--tls-ca", "/a"])
    assert (cfg.tls, cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.tls_verify_peer) == ("on", "/c", "/k", "/a", False)
    assert load_config([]).tls == "off"
    toml.write_text('tls = "yes"\n')
    with pytest.raises(SystemExit):
        load_config(["--config", str(toml)])
