"""The daemon's listening sockets, bound before the pool is touched.

A start that cannot serve must change nothing: a port in use or a socket path the
OS refuses is found here, before a pool is created in a fresh state directory, and
a failed start leaves no socket file behind (issue 13). The TCP port needs no
state directory, so it is tried first of all; the UNIX sockets live in the state
directory and are bound once its lock is held (a stale file is ours to replace).
The event loop later serves these sockets as they are.
"""

from __future__ import annotations

import errno
import os
import socket

from .errors import VsanError


class ListenError(VsanError):
    pass


class Listeners:
    def __init__(self, inherited: list[tuple[str, socket.socket]]):
        """``inherited``: systemd's sockets (name, socket); "control" is the control
        socket, any other an NBD one. An inherited kind is not bound again."""
        self.nbd = [s for n, s in inherited if n != "control"]
        self.nbd_inherited = bool(self.nbd)
        self.control = next((s for n, s in inherited if n == "control"), None)
        self.paths: list[str] = []           # the socket files bound here, unlinked at close
        self.metrics: list[socket.socket] = []  # the HTTP listener's (vsand/web), when configured

    def bind_tcp(self, tcp: tuple[str, int] | None) -> None:
        if tcp is None or self.nbd_inherited:
            return
        _tcp(tcp, self.nbd, "", " (another vsand, nbd-server or qemu-nbd? choose another "
                                "with --listen HOST:PORT or 'none')")

    def bind_metrics(self, tcp: tuple[str, int] | None) -> None:
        if tcp is not None:
            _tcp(tcp, self.metrics, " for metrics", " (choose another with --metrics HOST:PORT "
                                                    "or the config key metrics)")

    def bind_unix(self, nbd_path: str, control_path: str) -> None:
        """The daemon holds the state directory's lock: a file left at these paths
        is a dead daemon's socket."""
        if not self.nbd_inherited:
            self.nbd.append(self._unix(nbd_path, 0o660))
        if self.control is None:
            self.control = self._unix(control_path, 0o600)   # root's tool only

    def _unix(self, path: str, mode: int) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o777 & ~mode)       # never reachable wider than mode, not even briefly
        try:
            if os.path.lexists(path):
                os.unlink(path)
            s.bind(path)
            self.paths.append(path)
            s.listen(128)
        except OSError as e:
            s.close()
            raise ListenError(f"cannot listen on {path}: {e.strerror or e}") from None
        finally:
            os.umask(old)
        return s

    def close(self) -> None:
        for s in self.nbd + self.metrics + [self.control]:
            if s is not None:
                s.close()
        for p in self.paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


def _tcp(tcp: tuple[str, int], into: list, what: str, in_use: str) -> None:
    """Binds and listens on every address ``tcp`` resolves to, each socket into
    ``into`` (closed by Listeners.close, also when a later one fails)."""
    host, port = tcp
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ListenError(f"cannot listen on {host}:{port}{what}: {e.strerror}") from None
    for family, kind, proto, _, addr in infos:
        s = socket.socket(family, kind, proto)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as asyncio does
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.listen(128)
        except OSError as e:
            s.close()
            raise ListenError(f"cannot listen on {host}:{port}{what}: {(e.strerror or str(e)).lower()}"
                              + (in_use if e.errno == errno.EADDRINUSE else "")) from None
        into.append(s)
