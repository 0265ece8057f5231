"""TLS for NBD over TCP: the server's settings, made from the config at start.

Everything that can be wrong with them (a mode without a certificate, a file that
is missing, unreadable or not what it should be, a key that does not match its
certificate) is found here, before a port is bound or a pool opened, and refuses
the start with one line. UNIX sockets never use TLS: file permissions guard them
(server/starttls.py gives their handshakes the mode "off").
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from .errors import VsanError
from .nbd.handshake import TLS_MODES

MIN_VERSION = ssl.TLSVersion.TLSv1_2      # proto.md: TLS 1.2 at least


class TlsError(VsanError):
    pass


@dataclass(frozen=True)
class Tls:
    mode: str                  # "on" or "require" (TLS_MODES; "off" has no Tls)
    context: ssl.SSLContext
    verify_peer: bool          # a client certificate signed by the CA is required

    def describe(self) -> str:
        return f"TLS {self.mode}" + (", client certificates verified" if self.verify_peer else "")


def _readable(key: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise TlsError(f"{key} {path}: {(e.strerror or str(e)).lower()}") from None


def load(mode: str, cert: str, key: str, ca: str, verify_peer: bool) -> Tls | None:
    """The settings for ``mode`` (TLS_MODES), or None for "off" (then the paths
    are not looked at). ``key`` "": the key is in the ``cert`` file."""
    if mode not in TLS_MODES:
        raise TlsError(f"tls: expected one of {', '.join(TLS_MODES)}, not {mode!r}")
    if mode == "off":
        return None
    if not cert:
        raise TlsError(f"tls {mode} needs a server certificate: set tls_cert and tls_key")
    if verify_peer and not ca:
        raise TlsError("tls_verify_peer on needs tls_ca, the CA that signs client certificates")
    for name, path in (("tls_cert", cert), ("tls_key", key), ("tls_ca", ca)):
        if path:
            _readable(name, path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSION
    try:
        ctx.load_cert_chain(cert, key or None)
    except (ssl.SSLError, OSError) as e:
        raise TlsError(f"tls_cert {cert}{' / tls_key ' + key if key else ''}: "
                       f"{_reason(e)} (is it a PEM certificate and its private key?)") from None
    if ca:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as e:
            raise TlsError(f"tls_ca {ca}: {_reason(e)} (is it a PEM CA certificate?)") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if verify_peer else ssl.CERT_NONE
    return Tls(mode, ctx, verify_peer)


def _reason(e: Exception) -> str:
    return str(getattr(e, "reason", None) or getattr(e, "strerror", None) or e).lower().replace("_", " ")
