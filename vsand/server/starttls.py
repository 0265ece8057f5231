"""STARTTLS on an NBD connection: the transport under it becomes TLS.

The handshake (nbd/handshake.py) has acknowledged STARTTLS and the connection has
queued the ACK on its plain transport. Here the connection stops reading (the
client's next bytes are its TLS ClientHello, for the TLS layer), asyncio's
``start_tls`` runs the TLS handshake on the same socket, and the connection goes
on over the TLS transport (``_upgrade`` swaps ``conn.transport`` and sets
``conn.peer_names``; the handshake's ``tls_active`` says TLS is up): option negotiation starts over and, after
GO, requests run through the same code as in plain text.

A TLS handshake that fails (no TLS at all, a certificate the server rejects, a
client that goes away or takes too long) ends that connection only: one log line
with the reason, as for any connection.
"""

from __future__ import annotations

import asyncio
import logging
from socket import AF_INET, AF_INET6

from ..peer import cert_names

log = logging.getLogger("vsand.server")
TLS_HIGH = 64 << 10  # reply bytes the TLS layer may hold before the connection pauses
# Seconds a closing connection waits for the client's TLS close_notify (the TLS
# layer's default is 30): the client answers once it has read every reply before
# it, so a slow reader keeps its last replies as long as the daemon's stop drains.
SHUTDOWN_WAIT = 10.0
_upgrading: set = set()      # the running upgrades' tasks (the loop keeps only weak references)


def mode(tls, transport) -> str:
    """The handshake's TLS mode on ``transport``: the server's (``tls``: its TLS
    settings, or None) on TCP; "off" on UNIX sockets, which stay plain."""
    family = getattr(transport.get_extra_info("socket"), "family", None)
    return tls.mode if tls is not None and family in (AF_INET, AF_INET6) else "off"


def _close(conn, why: str) -> None:
    conn.why = conn.why or f"handshake ended: {why}"
    conn.transport.close()     # sends what is buffered first


def begin(conn, leftover: bytes) -> None:
    """Starts the upgrade of ``conn``, whose handshake has just acknowledged
    STARTTLS; ``leftover``: bytes that came after STARTTLS before the ACK."""
    if leftover:
        # proto.md: the client waits for the ACK, then starts TLS; plain bytes
        # here are no TLS handshake (and start_tls cannot be handed them)
        _close(conn, "data after STARTTLS before its reply (not a TLS handshake)")
        return
    if conn.paused:
        # The client left replies unread: the ACK is stuck behind them, and the
        # TLS layer could never take over the plain transport's write state.
        _close(conn, "STARTTLS while earlier option replies were left unread")
        return
    transport = conn.transport
    transport.pause_reading()            # the ClientHello is for the TLS layer, read below
    conn.tls_pending = bytearray()
    task = asyncio.get_running_loop().create_task(_upgrade(conn, transport))
    _upgrading.add(task)
    task.add_done_callback(_upgrading.discard)


async def _upgrade(conn, transport) -> None:
    loop = asyncio.get_running_loop()
    try:
        tls = await loop.start_tls(transport, conn, conn.server.tls.context, server_side=True,
                                   ssl_shutdown_timeout=SHUTDOWN_WAIT)
    except Exception as e:          # noqa: BLE001 (any failure ends this connection only)
        _failed(conn, f"TLS handshake failed: {_reason(e)}")
        return
    if tls is None or tls.is_closing() or conn.closed:
        # the socket closed during the handshake (asyncio then returns no transport)
        _failed(conn, "TLS handshake failed: the connection closed during it")
        return
    conn.transport = tls
    # Not the plain transport's 0/0 (NbdConnection.connection_made): the TLS layer
    # can hold bytes of its own (uvloop keeps TLS 1.3 session tickets queued
    # until the next read or write), and a connection paused at the first such
    # byte would stop reading and never see them go. Up to TLS_HIGH bytes of
    # replies more per connection wait in the TLS layer, outside the budget.
    tls.set_write_buffer_limits(high=TLS_HIGH, low=0)
    conn.peer_names = cert_names(tls.get_extra_info("peercert"))
    conn.hs.tls_started()
    names = ", ".join(sorted(conn.peer_names))
    log.info("NBD connection %s: %s, %s", conn.peer, tls.get_extra_info("ssl_object").version(),
             f"client certificate of {names}" if names else "no verified client certificate")
    early, conn.tls_pending = conn.tls_pending, None
    # Options the TLS layer decrypted before start_tls returned go in as reads do.
    while early and not conn.closed:
        buf = conn.get_buffer(len(early))
        n = min(len(buf), len(early))
        buf[:n] = early[:n]
        del early[:n]
        conn.buffer_updated(n)


def _failed(conn, why: str) -> None:
    """The connection ends; the TLS layer does not always report the loss of a
    connection it never finished setting up, so it is ended here (once)."""
    conn.why = conn.why or why
    if conn.transport is not None and not conn.transport.is_closing():
        conn.transport.abort()
    conn.connection_lost(None)


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 300 else text[:300] + "..."
