"""Who may use which export over NBD: the TCP listener's allowlist and each LD's rules.

Two kinds of rule, both decided here from what is known of a client (``Client``):
its address (TCP) and the names of its verified TLS client certificate.

- The listener's allowlist (config ``nbd_allow``): addresses and networks that
  may talk to the TCP listener at all; empty allows every address. A client outside
  it gets ERR_POLICY for every option (the handshake's ``refused``).
- An LD's rules (LD attributes, changed with ``vsanctl lun set``): ``allow_cert``,
  certificate names of which a client must present one (verified by TLS) to use
  the export; ``readonly_for``, addresses, networks or ``cert:NAME`` entries whose
  clients see the export read-only.

UNIX socket clients (address None) are outside both: the socket file's
permissions decide who reaches it, and they carry no certificate. Names are
compared exactly; an empty name never matches. Stdlib only, so the NBD server,
the control plane and the daemon share it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
CERT = "cert:"                 # a readonly_for entry naming a certificate, not an address
ATTRS = ("allow_cert", "readonly_for")   # the LD attributes that hold the rules
MAX_NAME = 1024


def network(text: str) -> Network:
    """ADDR or ADDR/PREFIX (IPv4 or IPv6); ValueError says what is wrong.
    Host bits set under the prefix are refused: "10.0.0.1/8" is likely a typo."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected an address or network such as 127.0.0.1, 10.0.0.0/8 or ::1, not {text!r}")
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise ValueError(f"not an address or network: {text!r} ({e})") from None
    # An IPv4-mapped entry (::ffff:a.b.c.d) names IPv4 clients, which address_of
    # makes IPv4: as written it would never match
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 \
            and net.network_address.ipv4_mapped is not None:
        return ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


def cert_name(text: str) -> str:
    """A certificate name as a rule holds it: non-empty, printable, no comma (the
    command line separates names with commas)."""
    if not isinstance(text, str):
        raise ValueError(f"a certificate name must be a string, not {text!r}")
    t = text.strip()
    if not t:
        raise ValueError("empty certificate name")
    if len(t) > MAX_NAME or "," in t or not t.isprintable():
        raise ValueError(f"not a certificate name: {text!r} (printable, no commas, "
                         f"at most {MAX_NAME} characters)")
    return t


def readonly_entry(text: str) -> str:
    """``ADDR``, ``ADDR/PREFIX`` or ``cert:NAME``, in the form rules keep
    (networks with their prefix: "127.0.0.2" -> "127.0.0.2/32")."""
    if isinstance(text, str) and text.strip().lower().startswith(CERT):
        return CERT + cert_name(text.strip()[len(CERT):])
    return str(network(text))


def address_of(peername, family) -> Address | None:
    """A TCP peer's address from asyncio's ``peername``; None for a UNIX socket.
    The socket's ``family`` says which, never the form of ``peername``: a TCP peer
    whose address cannot be read raises ValueError (to be refused), so it is never
    taken for a UNIX client, which the rules exempt. An IPv4 client of a
    dual-stack listener (::ffff:a.b.c.d) is its IPv4 address."""
    if family == socket.AF_UNIX:
        return None
    if not isinstance(peername, tuple) or len(peername) < 2:
        raise ValueError(f"the peer's address is unknown ({peername!r})")
    try:
        addr = ipaddress.ip_address(str(peername[0]).split("%", 1)[0])   # no zone: rules have none
    except ValueError:
        raise ValueError(f"the peer's address is unknown ({peername[0]!r})") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@dataclass(frozen=True)
class Client:
    address: Address | None = None          # None: a UNIX socket client
    names: frozenset[str] = frozenset()     # verified certificate names (subject CN, SANs)


class Allowlist:
    """The TCP listener's allowlist; empty: every address."""

    def __init__(self, specs=()):
        self.networks = [network(s) for s in specs]

    def admits(self, client: Client) -> bool:
        if client.address is None or not self.networks:
            return True
        return any(client.address in n for n in self.networks)

    def __str__(self) -> str:
        return ", ".join(map(str, self.networks)) or "any address"


@dataclass(frozen=True)
class Rules:
    """One LD's rules, from its attributes."""
    allow_cert: frozenset[str] = frozenset()
    readonly_networks: tuple[Network, ...] = ()
    readonly_names: frozenset[str] = frozenset()

    @classmethod
    def of(cls, attrs: dict) -> "Rules":
        ro = attrs.get("readonly_for") or ()
        return cls(frozenset(attrs.get("allow_cert") or ()),
                   tuple(network(e) for e in ro if not e.startswith(CERT)),
                   frozenset(e[len(CERT):] for e in ro if e.startswith(CERT)))

    def check(self, client: Client) -> tuple[str | None, bool]:
        """(why the client is refused the export or None, whether it sees it read-only)."""
        names = client.names - {""}
        if self.allow_cert and client.address is not None and not names & self.allow_cert:
            why = ("no verified client certificate (this export needs TLS with a client "
                   "certificate)" if not names else "the client certificate is not allowed "
                   "to use this export")
            return why, False
        if client.address is None:
            return None, False
        ro = bool(names & self.readonly_names) or any(client.address in n for n in self.readonly_networks)
        return None, ro


def rule(key: str, entries) -> list[str]:
    """LD attribute ``key`` (one of ATTRS) for these entries: checked, in the form
    rules keep, each once, sorted; [] clears the rule."""
    if not isinstance(entries, list):
        raise ValueError(f"{key}: expected a list, not {entries!r}")
    parse = cert_name if key == "allow_cert" else readonly_entry
    return sorted({parse(e) for e in entries})
