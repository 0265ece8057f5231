"""Blocking client for the control socket (used by vsanctl).

Every way a call can fail ends in one ControlError whose ``kind`` says which
(vsanctl turns the kind into its exit status): the daemon refused the request,
or the socket could not be reached, was not ours to open, dropped mid-request,
sent something that is not a reply, or stayed silent past the timeout.
"""

from __future__ import annotations

import socket

import msgpack

from .schema import FRAME, MAX_REPLY

REFUSED = "refused"          # the daemon answered: no (errno set)
UNREACHABLE = "unreachable"  # no socket, nobody listening on it, not a socket
DENIED = "denied"            # the socket's permissions keep us out
LOST = "lost"                # the connection ended mid-request (daemon killed, restarted)
PROTOCOL = "protocol"        # the reply was not a control frame (garbage, too long)
TIMEOUT = "timeout"          # no (whole) reply in time

DEFAULT_TIMEOUT = 600.0


class ControlError(Exception):
    def __init__(self, message: str, errno: int = 0, kind: str = REFUSED, cause: OSError | None = None):
        super().__init__(message)
        self.errno = errno
        self.kind = kind
        self.cause = cause           # the OSError of a failed connect


def call(path: str, op: str, timeout: float = DEFAULT_TIMEOUT, **args):
    """The result of ``op`` (its warnings dropped: see ``request``)."""
    return request(path, op, timeout, args)[0]


def request(path: str, op: str, timeout: float, args: dict) -> tuple[object, list[str]]:
    """(result, warnings) of ``op``; ControlError when it fails, however it fails."""
    s = _connect(path, timeout)
    with s:
        body = msgpack.packb({"op": op, "args": args}, use_bin_type=True)
        try:
            s.sendall(FRAME.pack(len(body)) + body)
        except (BrokenPipeError, ConnectionResetError):
            pass           # the daemon may have answered (e.g. "too many connections") and closed
        except TimeoutError:
            raise ControlError(f"no reply from the daemon within {timeout:g} s", kind=TIMEOUT) from None
        reply = _reply(s, timeout)
    if not reply.get("ok"):
        err = reply.get("errno", 0)
        raise ControlError(str(reply.get("error", "unknown error")), err if isinstance(err, int) else 0)
    warnings = reply.get("warnings") or ()
    return reply.get("result"), [str(w) for w in warnings] if isinstance(warnings, list) else []


def _connect(path: str, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except TimeoutError:
        s.close()
        raise ControlError(f"the daemon at {path} did not accept within {timeout:g} s", kind=TIMEOUT) from None
    except OSError as e:
        s.close()
        kind = DENIED if isinstance(e, PermissionError) else UNREACHABLE
        raise ControlError(f"cannot reach the vsand daemon at {path}: {e.strerror or e}",
                           kind=kind, cause=e) from None
    return s


def _reply(s: socket.socket, timeout: float) -> dict:
    try:
        (n,) = FRAME.unpack(_recv(s, FRAME.size))
        if n > MAX_REPLY:      # refused before reading: a broken length must not make us allocate it
            raise ControlError(f"the daemon sent a reply of {n} bytes (more than {MAX_REPLY}): "
                               "not a vsand control socket?", kind=PROTOCOL)
        raw = _recv(s, n)
    except TimeoutError:
        raise ControlError(f"no reply from the daemon within {timeout:g} s", kind=TIMEOUT) from None
    except OSError as e:          # ECONNRESET and friends: the daemon went away
        raise ControlError(f"the daemon dropped the control connection mid-request "
                           f"({e.strerror or e}): was it stopped or killed?", kind=LOST) from None
    try:
        reply = msgpack.unpackb(raw, raw=False)
    except Exception:          # msgpack raises several unrelated types for bad input
        reply = None
    if not isinstance(reply, dict):
        raise ControlError("the daemon sent a malformed reply: not a vsand control socket?", kind=PROTOCOL)
    return reply


def _recv(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ControlError("the daemon closed the control connection mid-request: "
                               "was it stopped or killed?", kind=LOST)
        buf += chunk
    return bytes(buf)
