"""A test CA made with the openssl command line, the commands README.md's TLS
section gives: a CA, a server certificate for 127.0.0.1 and localhost, and client
certificates; ``client_dir`` lays out a directory as libnbd's tls-certificates=DIR
and QEMU's tls-creds-x509 dir= want it (ca-cert.pem, client-cert.pem, client-key.pem)."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess

import pytest

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def need_openssl() -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (make test installs it as root)")


def _openssl(*args, cwd) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"openssl {' '.join(args)}:\n{r.stderr}"


class CA:
    def __init__(self, where, name: str = "vsand test CA"):
        need_openssl()
        self.dir = str(where)
        os.makedirs(self.dir, exist_ok=True)
        self.cert = os.path.join(self.dir, "ca-cert.pem")
        self.key = os.path.join(self.dir, "ca-key.pem")
        _openssl("req", "-x509", *EC, "-keyout", self.key, "-out", self.cert, "-days", "3650",
                 "-subj", f"/CN={name}", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 cwd=self.dir)

    def issue(self, name: str, cn: str, san: str, usage: str) -> tuple[str, str]:
        """(certificate, key) paths of a certificate for ``cn`` with subjectAltName
        ``san`` ("DNS:localhost,IP:127.0.0.1") and extendedKeyUsage ``usage``
        (serverAuth or clientAuth)."""
        cert = os.path.join(self.dir, f"{name}-cert.pem")
        key = os.path.join(self.dir, f"{name}-key.pem")
        csr = os.path.join(self.dir, f"{name}.csr")
        ext = os.path.join(self.dir, f"{name}.ext")
        with open(ext, "w") as f:
            f.write(f"subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\n")
        _openssl("req", "-new", *EC, "-keyout", key, "-out", csr, "-subj", f"/CN={cn}", cwd=self.dir)
        _openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial",
                 "-out", cert, "-days", "825", "-extfile", ext, cwd=self.dir)
        return cert, key

    def server(self) -> tuple[str, str]:
        return self.issue("server", "localhost", "DNS:localhost,IP:127.0.0.1", "serverAuth")

    def client(self, name: str = "client1") -> tuple[str, str]:
        return self.issue(name, name, f"DNS:{name}.example,URI:vsand://{name}", "clientAuth")


def client_dir(where, ca: CA, client: tuple[str, str] | None) -> str:
    """The client's view: the CA that signs the server, and its own certificate
    (none when ``client`` is None)."""
    d = str(where)
    os.makedirs(d, exist_ok=True)
    shutil.copy(ca.cert, os.path.join(d, "ca-cert.pem"))
    if client is not None:
        shutil.copy(client[0], os.path.join(d, "client-cert.pem"))
        shutil.copy(client[1], os.path.join(d, "client-key.pem"))
    return d


class BioTLS:
    """A TLS client over a connected socket through memory BIOs, so that the test
    chooses what goes in each write: ``send_with_finished`` puts application data
    in the same write as the client's last handshake message."""

    def __init__(self, sock, ca_cert: str, client: tuple[str, str] | None = None):
        ctx = ssl.create_default_context(cafile=ca_cert)
        if client:
            ctx.load_cert_chain(*client)
        self.sock, self.inc, self.out = sock, ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname="127.0.0.1")
        while True:
            try:
                self.tls.do_handshake()      # done: the client's Finished waits in self.out
                return
            except ssl.SSLWantReadError:
                if self.out.pending:
                    sock.sendall(self.out.read())
                self._more()

    def _more(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the server closed the connection"
        self.inc.write(data)

    def send_with_finished(self, data: bytes) -> None:
        self.tls.write(data)
        self.sock.sendall(self.out.read())

    def recv(self, n: int) -> bytes:
        while True:
            try:
                return self.tls.read(n)
            except ssl.SSLWantReadError:
                self._more()
