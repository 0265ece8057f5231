"""TLS for NBD over TCP (issue 14 item 3, NBD-NOTES §1.12) against REAL daemons:
libnbd (nbdinfo, nbdsh) and qemu-img with X.509 certificates from a test CA made
with openssl (tests/tlskit.py), and raw probes on a socket: downgrade attempts under
``tls = require``, STARTTLS twice or with data, plain bytes where the TLS handshake
belongs, client certificates that are missing or from another CA. After every probe
the daemon is alive, logged no traceback, and serves a TLS client."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import struct
import time
import textwrap

import pytest

from daemonkit import ROOT, SYS_PY, VSAND, Daemon, free_port, healthy, need, run
from tlskit import CA, BioTLS, client_dir
from vsand.nbd import constants as C

MiB = 1 << 20
LUN = "sec"
SYS_ENV = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))
OPT_REPLY_MAGIC = 0x3E889045565A9


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca = CA(root / "ca")
    other = CA(root / "other", "another CA")
    cert, key = ca.server()
    return {
        "ca": ca, "cert": cert, "key": key, "client": ca.client(),
        "good": client_dir(root / "good", ca, ca.client("client1")),
        "nocert": client_dir(root / "nocert", ca, None),
        "foreign": client_dir(root / "foreign", ca, other.client("stranger")),
    }


def tls_flags(pki, mode: str, verify: bool) -> list[str]:
    return ["--tls", mode, "--tls-cert", pki["cert"], "--tls-key", pki["key"],
            "--tls-ca", pki["ca"].cert, "--tls-verify-peer", "on" if verify else "off"]


def started(path, extra) -> Daemon:
    d = Daemon(path, drives=4, drive_size="256M", extra=extra).start()
    d.ctl("lun.create", name=LUN, size=64 * MiB, raid=0)
    return d


@pytest.fixture(scope="module")
def secure(tmp_path_factory, pki):
    """tls = require, client certificates verified."""
    d = started(tmp_path_factory.mktemp("vsand-tls-require"), tls_flags(pki, "require", True))
    yield d
    assert d.stop() == 0, d.read_log()


@pytest.fixture(scope="module")
def selective(tmp_path_factory, pki):
    """tls = on, no client certificates asked for."""
    d = started(tmp_path_factory.mktemp("vsand-tls-on"), tls_flags(pki, "on", False))
    yield d
    assert d.stop() == 0, d.read_log()


def nbds(d, lun: str = LUN, certs: str = "") -> str:
    return f"nbds://127.0.0.1:{d.port}/{lun}?tls-certificates={certs}"


# ---- a raw client ----------------------------------------------------------------------------
class Raw:
    def __init__(self, d, unix: bool = False):
        if unix:
            self.s = socket.socket(socket.AF_UNIX)
            self.s.settimeout(10)
            self.s.connect(d.sock)
        else:
            self.s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        magic, opt, hflags = struct.unpack(">QQH", self.recvn(18))
        assert (magic, opt) == (C.NBDMAGIC, C.IHAVEOPT)
        self.s.sendall(struct.pack(">I", C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES))

    def recvn(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            got = self.s.recv(n - len(buf))
            if not got:
                raise EOFError(f"EOF after {len(buf)} of {n} bytes")
            buf += got
        return buf

    def option(self, o: int, data: bytes = b"") -> None:
        self.s.sendall(struct.pack(">QII", C.IHAVEOPT, o, len(data)) + data)

    def final(self, o: int) -> list[int]:
        """Reply types up to and including the final one."""
        types = []
        while True:
            magic, ro, t, n = struct.unpack(">QIII", self.recvn(20))
            assert magic == OPT_REPLY_MAGIC and ro == o, (hex(magic), ro, o)
            self.recvn(n)
            types.append(t)
            if t == C.REP_ACK or t & C.REP_ERR:
                return types

    def ask(self, o: int, data: bytes = b"") -> list[int]:
        self.option(o, data)
        return self.final(o)

    def starttls(self, pki, client=None) -> None:
        assert self.ask(C.OPT_STARTTLS) == [C.REP_ACK]
        ctx = ssl.create_default_context(cafile=pki["ca"].cert)
        if client:
            ctx.load_cert_chain(*client)
        self.s = ctx.wrap_socket(self.s, server_hostname="127.0.0.1")

    def closed(self) -> bool:
        """True once the server closes (EOF or reset) without sending anything."""
        try:
            return self.s.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True

    def read_back(self, lun: str = LUN) -> bytes:
        """GO, then READ 4 KiB at 0 (simple replies), then DISC."""
        name = lun.encode()
        assert self.ask(C.OPT_GO, struct.pack(">I", len(name)) + name + b"\0\0")[-1] == C.REP_ACK
        self.s.sendall(struct.pack(">IHHQQI", C.REQUEST_MAGIC, 0, C.CMD_READ, 7, 0, 4096))
        magic, err, cookie = struct.unpack(">IIQ", self.recvn(16))
        assert (magic, err, cookie) == (C.SIMPLE_REPLY_MAGIC, 0, 7)
        data = self.recvn(4096)
        self.s.sendall(struct.pack(">IHHQQI", C.REQUEST_MAGIC, 0, C.CMD_DISC, 8, 0, 0))
        return data


def info_data(name: str) -> bytes:
    n = name.encode()
    return struct.pack(">I", len(n)) + n + b"\0\0"


def serves(d, pki) -> None:
    """The daemon is alive, logged no traceback, and a TLS client reads."""
    healthy(d)
    r = Raw(d)
    r.starttls(pki, pki["client"])
    assert len(r.read_back()) == 4096


# ---- real clients ----------------------------------------------------------------------------
def test_nbdinfo_over_tls_and_peer_names(secure, pki):
    need("nbdinfo")
    out = run(["nbdinfo", nbds(secure, certs=pki["good"])]).stdout
    assert "with TLS" in out and "export-size: 67108864" in out, out
    log = secure.read_log()
    assert "TLSv1.3, client certificate of client1, client1.example, vsand://client1" in log, log
    serves(secure, pki)


def test_qemu_img_over_tls(secure, pki, tmp_path):
    need("qemu-img")
    creds = f"tls-creds-x509,id=tls0,dir={pki['good']},endpoint=client"
    opts = (f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={secure.port},"
            f"export={LUN},tls-creds=tls0")
    src, back = tmp_path / "src.bin", tmp_path / "back.bin"
    src.write_bytes(os.urandom(4 * MiB))
    run(["qemu-img", "convert", "-n", "--object", creds, "-f", "raw", str(src),
         "--target-image-opts", opts])
    run(["qemu-img", "convert", "--object", creds, "--image-opts", opts, "-O", "raw", str(back)])
    assert back.read_bytes()[:4 * MiB] == src.read_bytes()
    info = run(["qemu-img", "info", "--object", creds, "--image-opts", opts]).stdout
    assert "67108864 bytes" in info, info
    serves(secure, pki)


def test_nbdsh_over_tls_write_read(secure, pki):
    need("nbdsh")
    if run([SYS_PY, "-c", "import nbd"], check=False).returncode != 0:
        pytest.skip("the libnbd Python binding (python3-libnbd) is not installed for /usr/bin/python3")
    script = textwrap.dedent(f"""
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_certificates({pki["good"]!r})
        h.set_export_name({LUN!r})
        h.connect_tcp("127.0.0.1", "{secure.port}")
        assert h.get_tls_negotiated()
        data = bytes(range(256)) * 4096
        h.pwrite(data, 3 << 20)
        h.flush()
        assert h.pread(len(data), 3 << 20) == data
        big = h.pread(16 << 20, 0)          # replies larger than the TLS layer's pause mark
        assert big[3 << 20:(3 << 20) + len(data)] == data
    """)
    run(["nbdsh", "-c", script], env=SYS_ENV)
    serves(secure, pki)


def test_nbd_client_list_over_tls(secure, pki):
    """The kernel client's tool (its userspace TLS proxy speaks TLS 1.2 here); -l
    needs no kernel module."""
    need("nbd-client")
    d = pki["good"]
    out = run(["nbd-client", "-l", "127.0.0.1", str(secure.port), "-cacertfile", f"{d}/ca-cert.pem",
               "-certfile", f"{d}/client-cert.pem", "-keyfile", f"{d}/client-key.pem"], timeout=60).stdout
    assert f"{LUN}: 64 MiB RAID0" in out, out
    r = run(["nbd-client", "-l", "127.0.0.1", str(secure.port)], check=False, timeout=60)
    assert r.returncode != 0 and LUN not in r.stdout and "TLS is required" in r.stdout + r.stderr
    serves(secure, pki)


@pytest.mark.parametrize("who", ["nocert", "foreign"])
def test_client_certificate_missing_or_from_another_ca_refused(secure, pki, who):
    need("nbdinfo")
    before = secure.read_log().count("TLS handshake failed")
    r = run(["nbdinfo", nbds(secure, certs=pki[who])], check=False)
    assert r.returncode != 0 and "export-size" not in r.stdout
    # the daemon logs the failure once its side of the handshake ends, which on a busy
    # machine can be after nbdinfo has exited
    deadline = time.monotonic() + 30
    while secure.read_log().count("TLS handshake failed") <= before:
        assert time.monotonic() < deadline, secure.read_log()
        time.sleep(0.05)
    serves(secure, pki)


# ---- downgrades under require ----------------------------------------------------------------
@pytest.mark.parametrize("o,data", [
    (C.OPT_LIST, b""),
    (C.OPT_INFO, info_data(LUN)),
    (C.OPT_GO, info_data(LUN)),
    (C.OPT_STRUCTURED_REPLY, b""),
    (C.OPT_LIST_META_CONTEXT, struct.pack(">I", 3) + LUN.encode() + struct.pack(">I", 0)),
])
def test_require_refuses_options_before_tls(secure, pki, o, data):
    r = Raw(secure)
    assert r.ask(o, data) == [C.REP_ERR_TLS_REQD]       # no export named, nothing served
    r.starttls(pki, pki["client"])                     # the same connection then works
    assert C.REP_SERVER in r.ask(C.OPT_LIST)
    assert len(r.read_back()) == 4096
    serves(secure, pki)


def test_require_closes_export_name_before_tls(secure, pki):
    r = Raw(secure)
    r.option(C.OPT_EXPORT_NAME, LUN.encode())
    assert r.closed()
    assert "EXPORT_NAME before STARTTLS" in secure.read_log()
    serves(secure, pki)


def test_plain_libnbd_refused_under_require(secure, pki):
    need("nbdinfo")
    r = run(["nbdinfo", f"nbd://127.0.0.1:{secure.port}/{LUN}"], check=False)
    assert r.returncode != 0 and "export-size" not in r.stdout
    r = run(["nbdinfo", "--list", f"nbd://127.0.0.1:{secure.port}/"], check=False)
    assert LUN not in r.stdout
    serves(secure, pki)


def test_unix_socket_stays_plain(secure, pki):
    need("nbdinfo")
    out = run(["nbdinfo", f"nbd+unix:///{LUN}?socket={secure.sock}"]).stdout
    assert "without TLS" in out and "export-size: 67108864" in out, out
    r = Raw(secure, unix=True)
    assert r.ask(C.OPT_STARTTLS) == [C.REP_ERR_POLICY]
    assert len(r.read_back()) == 4096
    serves(secure, pki)


# ---- STARTTLS misuse ---------------------------------------------------------------------------
def test_starttls_twice_is_invalid(secure, pki):
    r = Raw(secure)
    r.starttls(pki, pki["client"])
    assert r.ask(C.OPT_STARTTLS) == [C.REP_ERR_INVALID]
    assert len(r.read_back()) == 4096
    serves(secure, pki)


def test_starttls_with_data_is_invalid(secure, pki):
    r = Raw(secure)
    assert r.ask(C.OPT_STARTTLS, b"\x16\x03\x01") == [C.REP_ERR_INVALID]
    assert r.ask(C.OPT_LIST) == [C.REP_ERR_TLS_REQD]       # still no TLS, still required
    r.starttls(pki, pki["client"])
    assert len(r.read_back()) == 4096
    serves(secure, pki)


def test_plain_bytes_after_starttls_ack_close(secure, pki):
    r = Raw(secure)
    assert r.ask(C.OPT_STARTTLS) == [C.REP_ACK]
    r.option(C.OPT_LIST)                    # plain text where the ClientHello belongs
    assert r.closed()
    serves(secure, pki)
    assert "TLS handshake failed" in secure.read_log()


def test_bytes_sent_with_starttls_close(secure, pki):
    r = Raw(secure)
    r.s.sendall(struct.pack(">QII", C.IHAVEOPT, C.OPT_STARTTLS, 0) + b"\x16\x03\x01\x00\x05hello")
    assert r.final(C.OPT_STARTTLS) == [C.REP_ACK]
    assert r.closed()
    assert "data after STARTTLS" in secure.read_log()
    serves(secure, pki)


def test_option_in_the_same_packet_as_the_tls_finished(secure, pki):
    """Options that come with the client's last TLS handshake message are answered
    inside TLS. (asyncio's TLS layer hands them over before start_tls returns,
    uvloop's after; tests/unit/test_starttls_loops.py runs both loops.)"""
    r = Raw(secure)
    assert r.ask(C.OPT_STARTTLS) == [C.REP_ACK]
    tls = BioTLS(r.s, pki["ca"].cert, pki["client"])
    tls.send_with_finished(struct.pack(">QII", C.IHAVEOPT, C.OPT_LIST, 0))

    def recvn(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            buf += tls.recv(n - len(buf))
        return buf

    types = []
    while not types or types[-1] != C.REP_ACK:
        magic, ro, t, n = struct.unpack(">QIII", recvn(20))
        assert (magic, ro) == (OPT_REPLY_MAGIC, C.OPT_LIST)
        recvn(n)
        types.append(t)
    assert C.REP_SERVER in types
    serves(secure, pki)


def test_client_gone_during_tls_handshake(secure, pki):
    r = Raw(secure)
    assert r.ask(C.OPT_STARTTLS) == [C.REP_ACK]
    r.s.sendall(b"\x16\x03\x01\x02\x00\x01")       # the start of a ClientHello, then gone
    r.s.close()
    serves(secure, pki)


# ---- tls = on (selective) and off ------------------------------------------------------------------
def test_on_serves_plain_and_tls(selective, pki):
    need("nbdinfo")
    out = run(["nbdinfo", f"nbd://127.0.0.1:{selective.port}/{LUN}"]).stdout
    assert "without TLS" in out, out
    out = run(["nbdinfo", nbds(selective, certs=pki["nocert"])]).stdout
    assert "with TLS" in out, out
    assert "no verified client certificate" in selective.read_log()
    r = Raw(selective)
    assert C.REP_SERVER in r.ask(C.OPT_LIST)
    r.starttls(pki)
    assert len(r.read_back()) == 4096
    serves(selective, pki)


def test_stop_with_a_tls_client_in_transmission(selective, pki):
    """SIGTERM drains a TLS connection too (its TLS shutdown included); last test
    of ``selective``, whose fixture then finds it stopped."""
    r = Raw(selective)
    r.starttls(pki)
    name = LUN.encode()
    assert r.ask(C.OPT_GO, struct.pack(">I", len(name)) + name + b"\0\0")[-1] == C.REP_ACK
    selective.proc.send_signal(signal.SIGTERM)
    assert r.closed()            # the daemon's TLS close_notify, then the client's close
    r.s.close()
    assert selective.proc.wait(30) == 0, selective.read_log()
    log = selective.read_log()
    assert f"export {LUN} closed: daemon shutdown" in log and "Traceback" not in log, log


def test_off_starttls_is_policy(tmp_path):
    d = Daemon(tmp_path / "state", drives=4, drive_size="256M").start()
    try:
        d.ctl("lun.create", name=LUN, size=16 * MiB, raid=0)
        r = Raw(d)
        assert r.ask(C.OPT_STARTTLS) == [C.REP_ERR_POLICY]
        assert len(r.read_back()) == 4096
        healthy(d)
    finally:
        assert d.stop() == 0


# ---- refused starts ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["no-cert", "missing-key", "verify-without-ca"])
def test_bad_tls_settings_refuse_the_start(tmp_path, pki, case):
    state = tmp_path / "state"
    flags = {"no-cert": ["--tls", "require"],
             "missing-key": ["--tls", "on", "--tls-cert", pki["cert"], "--tls-key", str(tmp_path / "nokey.pem")],
             "verify-without-ca": ["--tls", "on", "--tls-cert", pki["cert"], "--tls-key", pki["key"],
                                   "--tls-verify-peer", "on"]}[case]
    r = run(VSAND + ["--state-dir", str(state), "--drives", "4", "--drive-size", "256M",
                     "--listen", f"127.0.0.1:{free_port()}", *flags], check=False, cwd=ROOT, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "cannot start: " in lines[0] and "tls" in lines[0], lines[0]
    assert not state.exists()            # refused before anything was created
