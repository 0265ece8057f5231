"""STARTTLS in the NBD server on both event loops it runs on (asyncio's own and
uvloop, which the daemon takes when installed): their TLS layers differ in when
they hand over the first decrypted bytes and in whether they report the loss of a
connection whose TLS handshake never finished. The server runs in-process on a
loopback port; the client is blocking socket code in a thread."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import ssl
import struct

import pytest

from tlskit import CA, BioTLS
from vsand import tls as tls_settings
from vsand.access import Rules
from vsand.nbd import constants as C
from vsand.nbd.handshake import Export
from vsand.server.nbd_server import NbdServer

OPT_REPLY_MAGIC = 0x3E889045565A9


class Exports:
    def lookup(self, name):
        return None

    def listing(self):
        return [Export("disk", 1 << 20, False, "1 MiB")]

    def begin_flush(self):
        return None

    def rules(self, name):
        return Rules()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = CA(tmp_path_factory.mktemp("pki"))
    return ca, ca.server(), ca.client()


def loops():
    return ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


async def listening(pki) -> tuple[NbdServer, int]:
    """A server with tls require and verified client certificates, and its port."""
    ca, server_cert, _ = pki
    srv = NbdServer(Exports(), io_threads=0, tls=tls_settings.load("require", *server_cert, ca.cert, True))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    await srv.listen_socket(sock, inherited=False)
    return srv, sock.getsockname()[1]


def run_on(kind: str, main) -> None:
    if kind == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())


def serve(kind: str, pki, client) -> tuple[object, int]:
    """Runs ``client(port)`` in a thread against ``listening``; returns what it
    returned and the number of connections the server still has afterwards."""
    result = {}

    async def main():
        srv, port = await listening(pki)
        loop = asyncio.get_running_loop()
        result["client"] = await loop.run_in_executor(None, client, port)
        deadline = loop.time() + 10
        while srv.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        result["left"] = len(srv.connections)
        await srv.stop()

    run_on(kind, main)
    return result["client"], result["left"]


def greet(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.recv(18, socket.MSG_WAITALL)
    s.sendall(struct.pack(">I", 3) + struct.pack(">QII", C.IHAVEOPT, C.OPT_STARTTLS, 0))
    assert struct.unpack(">QIII", s.recv(20, socket.MSG_WAITALL)) == (OPT_REPLY_MAGIC, C.OPT_STARTTLS, C.REP_ACK, 0)
    return s


@pytest.mark.parametrize("kind", loops())
def test_option_with_the_finished_message_is_answered_in_tls(kind, pki):
    ca, _, client_cert = pki

    def client(port):
        s = greet(port)
        tls = BioTLS(s, ca.cert, client_cert)
        tls.send_with_finished(struct.pack(">QII", C.IHAVEOPT, C.OPT_LIST, 0))
        got = b""
        while not got.endswith(struct.pack(">QIII", OPT_REPLY_MAGIC, C.OPT_LIST, C.REP_ACK, 0)):
            got += tls.recv(65536)
        s.close()
        return got

    got, left = serve(kind, pki, client)
    assert struct.pack(">QII", OPT_REPLY_MAGIC, C.OPT_LIST, C.REP_SERVER) in got and b"disk" in got
    assert left == 0


@pytest.mark.parametrize("kind", loops())
@pytest.mark.parametrize("how", ["plain-bytes", "gone-mid-handshake", "no-client-cert"])
def test_failed_tls_handshake_ends_the_connection(kind, pki, how):
    """Whatever the TLS layer reports, the server forgets the connection (the
    daemon's connection count and shutdown depend on it)."""
    ca, _, _ = pki

    def client(port):
        s = greet(port)
        if how == "plain-bytes":
            s.sendall(struct.pack(">QII", C.IHAVEOPT, C.OPT_LIST, 0))
            s.settimeout(10)
            try:
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass
        elif how == "gone-mid-handshake":
            s.sendall(b"\x16\x03\x01\x02\x00\x01")
        else:
            ctx = ssl.create_default_context(cafile=ca.cert)
            try:
                with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
                    t.recv(1)          # TLS 1.3: the server's refusal comes after the handshake
            except (ssl.SSLError, ConnectionResetError):
                pass
        s.close()
        return None

    _, left = serve(kind, pki, client)
    assert left == 0


@pytest.mark.parametrize("kind", loops())
def test_shutdown_during_tls_handshake_forgets_the_connection(kind, pki):
    """The server stops while a client is in the middle of its TLS handshake:
    the TLS layer never reports that connection's end, the server must."""
    left = {}

    async def main():
        srv, port = await listening(pki)
        loop = asyncio.get_running_loop()

        def client():
            s = greet(port)
            s.sendall(b"\x16\x03\x01\x02\x00\x01")     # a ClientHello's start, then silence
            s.settimeout(30)
            try:
                while s.recv(65536):                   # until the server closes
                    pass
            except OSError:
                pass
            s.close()

        done = loop.run_in_executor(None, client)
        deadline = loop.time() + 10
        while not any(c.tls_pending is not None for c in srv.connections) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert srv.connections, "the client's STARTTLS never arrived"
        await srv.stop(timeout=5)
        left["n"] = len(srv.connections)
        await done

    run_on(kind, main)
    assert left["n"] == 0
