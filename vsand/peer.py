"""Who is at the other end: of a UNIX socket, the kernel's word (SO_PEERCRED); of
a TLS connection, the names of the client certificate the TLS layer verified."""

from __future__ import annotations

import pwd
import socket
import struct

UCRED = struct.Struct("3i")       # struct ucred: pid, uid, gid


def credentials(sock) -> tuple[int, int] | None:
    """(pid, uid) of a UNIX socket's peer; None for other sockets (TCP, test pipes)."""
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    try:
        pid, uid, _ = UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))
    except OSError:
        return None
    return pid, uid


def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:                        # a uid without a passwd entry (containers)
        return None


def cert_names(cert: dict | None) -> frozenset[str]:
    """The names a verified client certificate carries, as ``ssl.getpeercert()``
    returns it: the subject's commonName(s) and the DNS and URI subjectAltName
    entries. Empty for no certificate, or one nobody verified (``getpeercert()``
    then returns an empty dict)."""
    if not cert:
        return frozenset()
    names = {value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"}
    names.update(value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "URI"))
    return frozenset(names)


def describe_peer(transport) -> str:
    """``127.0.0.1:40522``, or for a UNIX socket the client's process: ``unix pid=7 uid=0``."""
    name = transport.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        host = name[0]
        return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
    cred = credentials(transport.get_extra_info("socket"))
    return f"unix pid={cred[0]} uid={cred[1]}" if cred else "unix"
