"""Blocking client for the control socket (used by vsanctl)."""

from __future__ import annotations

import socket

import msgpack

from .schema import FRAME, MAX_FRAME


class ControlError(Exception):
    def __init__(self, message: str, errno: int = 0):
        super().__init__(message)
        self.errno = errno


def call(path: str, op: str, timeout: float = 600.0, **args):
    """The result of ``op`` (its warnings dropped: see ``request``)."""
    return request(path, op, timeout, args)[0]


def request(path: str, op: str, timeout: float, args: dict) -> tuple[object, list[str]]:
    """(result, warnings) of ``op``; ControlError when refused or unreachable."""
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(path)
    except OSError as e:
        raise ControlError(f"cannot reach the vsand daemon at {path}: {e.strerror or e}") from None
    with s:
        body = msgpack.packb({"op": op, "args": args}, use_bin_type=True)
        s.sendall(FRAME.pack(len(body)) + body)
        head = _recv(s, FRAME.size)
        (n,) = FRAME.unpack(head)
        if n > MAX_FRAME:
            raise ControlError("reply too large")
        reply = msgpack.unpackb(_recv(s, n), raw=False)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"), reply.get("errno", 0))
    return reply.get("result"), list(reply.get("warnings") or ())


def _recv(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ControlError("the daemon closed the control connection")
        buf += chunk
    return bytes(buf)
