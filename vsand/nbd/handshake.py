"""Server side of the fixed-newstyle handshake, sans-IO.

Feed it bytes; it returns bytes to send and, at the end, either ``Negotiated``
(enter transmission) or ``Closed`` (drop the connection). Export knowledge comes
from two callables, so this module never sees storage.

Metadata contexts: ``base:allocation`` is the protocol's own; an export may
offer more (``contexts(export name)`` returns their full names). A LIST query
names one context, or a namespace or prefix ending in ":" (``base:``,
``vsand:changed:``), which lists every context under it; SET selects exact names
only. Names nobody offers are simply not selected (proto.md), never an error.

Access: ``access(export)`` returns the export as this client may use it (read-only
for some clients), or a string saying why it may not; it is asked at each
decision, so what the connection learns meanwhile (a TLS client certificate)
counts. A refused export is left out of LIST; INFO/GO and the meta context
options get ERR_POLICY with the reason (issue 14: the protocol's error for a
policy refusal, which tells its owner why rather than that the name is wrong);
EXPORT_NAME closes. One exception (NBD-NOTES §1.12, SELECTIVETLS): under ``tls``
"on", before TLS, a refusal of the ``NeedsTLS`` kind (a verified client
certificate may lift it) gets ERR_TLS_REQD, which tells the client to upgrade.
``contexts(name)`` is this client's view too: it leaves out contexts naming LDs
the client may not use. Explicit refusals are kept in ``denied`` (export name,
why; each pair once) for the server to log.

Option handling follows proto.md (see ../shared/NBD-NOTES.md §1.2-1.3): every
option's data is consumed exactly; one final reply per option; unknown options
and ones we do not implement get ERR_UNSUP and negotiation goes on.

TLS (NBD-NOTES §1.12, row O4): ``tls`` is the connection's mode, fixed for its
life: "off" (STARTTLS gets ERR_POLICY), "on" (SELECTIVETLS with every export
served in plain too: STARTTLS is accepted, nothing ever needs it) or "require"
(FORCEDTLS: before TLS every option but STARTTLS and ABORT gets ERR_TLS_REQD and
EXPORT_NAME closes, so nothing is listed or served in plain). An accepted
STARTTLS ends ``receive`` with its ACK and a ``StartTLS`` outcome: the caller
sends the ACK, runs the TLS handshake on its transport and calls ``tls_started``
(or drops the connection when the TLS handshake fails); options then go on inside
TLS with every earlier negotiation forgotten (structured replies, meta contexts).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable

from . import constants as C

OPT_HEAD = struct.Struct(">QII")       # IHAVEOPT, option, length
REP_HEAD = struct.Struct(">QIII")      # magic, option, reply type, length
MAX_OPTION_DATA = 1 << 20              # larger option payloads are treated as abuse


@dataclass(frozen=True)
class Export:
    name: str
    size: int
    read_only: bool = False
    description: str = ""


@dataclass
class Negotiated:
    export: Export
    flags: int
    structured: bool
    meta_contexts: dict[int, str]
    leftover: bytes = b""


@dataclass
class Closed:
    reason: str


@dataclass
class StartTLS:
    """STARTTLS was acknowledged: the TLS handshake comes next on the wire.
    ``leftover``: bytes the client sent after STARTTLS without waiting for the ACK
    (plain text where a TLS ClientHello belongs: the caller closes)."""
    leftover: bytes = b""


TLS_MODES = ("off", "on", "require")


class NeedsTLS(str):
    """An ``access`` refusal that a verified TLS client certificate may lift: see
    the module doc (ERR_TLS_REQD before TLS under "on")."""


def transmission_flags(export: Export, structured: bool) -> int:
    f = (C.FLAG_HAS_FLAGS | C.FLAG_SEND_FLUSH | C.FLAG_SEND_FUA | C.FLAG_SEND_TRIM
         | C.FLAG_SEND_WRITE_ZEROES | C.FLAG_SEND_FAST_ZERO | C.FLAG_CAN_MULTI_CONN
         | C.FLAG_SEND_CACHE)
    if structured:
        f |= C.FLAG_SEND_DF   # DF needs structured replies (proto.md, flag bit 7)
    if export.read_only:
        f |= C.FLAG_READ_ONLY
    return f


def reply(opt: int, rtype: int, data: bytes = b"") -> bytes:
    return REP_HEAD.pack(C.REPLY_MAGIC, opt, rtype, len(data)) + data


def error(opt: int, rtype: int, msg: str) -> bytes:
    # cap at MAX_STRING bytes without splitting a UTF-8 character (strings MUST be UTF-8)
    return reply(opt, rtype, msg.encode()[: C.MAX_STRING].decode(errors="ignore").encode())


class _Bad(Exception):
    """Malformed option data: answered with ERR_INVALID."""


@dataclass
class Handshake:
    lookup: Callable[[str], Export | None]
    listing: Callable[[], list[Export]]
    shutting_down: Callable[[], bool] = lambda: False
    contexts: Callable[[str], list[str]] = lambda name: []   # beyond base:allocation
    access: Callable[[Export], Export | str] = lambda exp: exp
    refused: str | None = None     # server policy (too many connections, nbd_allow): every option is refused
    denied: list[tuple[str, str]] = field(default_factory=list)
    tls: str = "off"               # TLS_MODES: see the module doc
    tls_active: bool = False       # the TLS handshake succeeded (tls_started)
    buf: bytearray = field(default_factory=bytearray)
    state: str = "flags"
    no_zeroes: bool = False
    structured: bool = False
    meta_export: str | None = None
    meta: dict[int, str] = field(default_factory=dict)

    @staticmethod
    def greeting() -> bytes:
        return struct.pack(">QQH", C.NBDMAGIC, C.IHAVEOPT, C.FLAG_FIXED_NEWSTYLE | C.FLAG_NO_ZEROES)

    def tls_started(self) -> None:
        """The transport is TLS now: forget all negotiation done in plain text
        (proto.md: the client starts over, and a man in the middle may have
        chosen it). The client's handshake flags stay: they came before options."""
        self.tls_active = True
        self.buf.clear()
        self.structured = False
        self.meta, self.meta_export = {}, None

    def receive(self, data: bytes) -> tuple[bytes, Negotiated | Closed | StartTLS | None]:
        self.buf += data
        out = []
        while True:
            if self.state == "flags":
                if len(self.buf) < 4:
                    return b"".join(out), None
                (cflags,) = struct.unpack_from(">I", self.buf)
                del self.buf[:4]
                if cflags & ~(C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES):
                    return b"".join(out), Closed(f"unknown client flags {cflags:#x}")
                self.no_zeroes = bool(cflags & C.FLAG_C_NO_ZEROES)
                self.state = "options"
                continue
            if len(self.buf) < OPT_HEAD.size:
                return b"".join(out), None
            magic, opt, length = OPT_HEAD.unpack_from(self.buf)
            if magic != C.IHAVEOPT:
                return b"".join(out), Closed("bad option magic")
            if length > MAX_OPTION_DATA:
                return b"".join(out), Closed(f"option {opt} data of {length} bytes")
            if len(self.buf) < OPT_HEAD.size + length:
                return b"".join(out), None
            data = bytes(self.buf[OPT_HEAD.size: OPT_HEAD.size + length])
            del self.buf[: OPT_HEAD.size + length]
            rep, outcome = self._option(opt, data)
            out.append(rep)
            if outcome is not None:
                if isinstance(outcome, (Negotiated, StartTLS)):
                    outcome.leftover = bytes(self.buf)
                    self.buf.clear()
                return b"".join(out), outcome

    # ---- options -----------------------------------------------------------------
    def _option(self, opt: int, data: bytes) -> tuple[bytes, Negotiated | Closed | StartTLS | None]:
        if opt == C.OPT_ABORT:
            return reply(opt, C.REP_ACK), Closed("client sent ABORT")
        if self.shutting_down():
            return error(opt, C.REP_ERR_SHUTDOWN, "server is shutting down"), None
        if self.refused is not None:
            if opt == C.OPT_EXPORT_NAME:      # no error reply exists for it: close
                return b"", Closed(self.refused)
            return error(opt, C.REP_ERR_POLICY, self.refused), None
        if opt == C.OPT_STARTTLS:
            return self._starttls(opt, data)
        if self.tls == "require" and not self.tls_active:
            if opt == C.OPT_EXPORT_NAME:      # no error reply exists for it: close
                return b"", Closed("EXPORT_NAME before STARTTLS (TLS is required)")
            return error(opt, C.REP_ERR_TLS_REQD, "TLS is required: send STARTTLS first"), None
        try:
            if opt == C.OPT_EXPORT_NAME:
                return self._export_name(data)
            if opt == C.OPT_LIST:
                return self._list(opt, data), None
            if opt in (C.OPT_INFO, C.OPT_GO):
                return self._info_go(opt, data)
            if opt == C.OPT_STRUCTURED_REPLY:
                if data:
                    raise _Bad("STRUCTURED_REPLY takes no data")
                self.structured = True
                return reply(opt, C.REP_ACK), None
            if opt in (C.OPT_LIST_META_CONTEXT, C.OPT_SET_META_CONTEXT):
                return self._meta_context(opt, data), None
            return error(opt, C.REP_ERR_UNSUP, f"option {opt} is not supported"), None
        except _Bad as e:
            return error(opt, C.REP_ERR_INVALID, str(e)), None

    def _allowed(self, exp: Export) -> Export | str:
        got = self.access(exp)
        if isinstance(got, str) and (exp.name, got) not in self.denied:   # TLS may change why
            self.denied.append((exp.name, got))
        return got

    def _starttls(self, opt: int, data: bytes) -> tuple[bytes, StartTLS | None]:
        if self.tls_active:
            return error(opt, C.REP_ERR_INVALID, "TLS is already active"), None
        if data:
            return error(opt, C.REP_ERR_INVALID, "STARTTLS takes no data"), None
        if self.tls == "off":
            return error(opt, C.REP_ERR_POLICY, "TLS is not offered on this listener"), None
        return reply(opt, C.REP_ACK), StartTLS()

    def _export_name(self, data: bytes):
        name = _decode(data)
        exp = self.lookup(name) if name is not None else None
        if exp is None:
            # No error reply exists for EXPORT_NAME: the session ends.
            return b"", Closed(f"EXPORT_NAME for unknown export {name!r}")
        exp = self._allowed(exp)
        if isinstance(exp, str):
            return b"", Closed(f"EXPORT_NAME refused: {exp}")
        flags = transmission_flags(exp, self.structured)
        out = struct.pack(">QH", exp.size, flags)
        if not self.no_zeroes:
            out += bytes(124)
        return out, Negotiated(exp, flags, self.structured, self._contexts_for(exp.name))

    def _list(self, opt: int, data: bytes) -> bytes:
        if data:
            raise _Bad("LIST takes no data")
        out = []
        for exp in self.listing():
            if isinstance(self.access(exp), str):
                continue          # an export this client may not use is not shown to it
            name = exp.name.encode()
            out.append(reply(opt, C.REP_SERVER, struct.pack(">I", len(name)) + name
                             + exp.description.encode()))
        out.append(reply(opt, C.REP_ACK))
        return b"".join(out)

    def _info_go(self, opt: int, data: bytes):
        if len(data) < 6:
            raise _Bad("INFO/GO data too short")
        (n,) = struct.unpack_from(">I", data)
        if n > len(data) - 6:
            raise _Bad("export name length overruns the option")
        name = _decode(data[4:4 + n])
        if name is None:
            raise _Bad("export name is not valid UTF-8")
        (count,) = struct.unpack_from(">H", data, 4 + n)
        if len(data) != 6 + n + 2 * count:
            raise _Bad("information request count does not match the option length")
        reqs = set(struct.unpack_from(f">{count}H", data, 6 + n))
        exp = self.lookup(name)
        if exp is None:
            return error(opt, C.REP_ERR_UNKNOWN, f"no export named {name!r}"), None
        exp = self._allowed(exp)
        if isinstance(exp, str):
            return self._refused(opt, name, exp), None
        flags = transmission_flags(exp, self.structured)
        out = [reply(opt, C.REP_INFO, struct.pack(">HQH", C.INFO_EXPORT, exp.size, flags))]
        if C.INFO_NAME in reqs:
            out.append(reply(opt, C.REP_INFO, struct.pack(">H", C.INFO_NAME) + exp.name.encode()))
        if C.INFO_DESCRIPTION in reqs and exp.description:
            out.append(reply(opt, C.REP_INFO, struct.pack(">H", C.INFO_DESCRIPTION)
                             + exp.description.encode()))
        if C.INFO_BLOCK_SIZE in reqs:
            out.append(reply(opt, C.REP_INFO, struct.pack(">HIII", C.INFO_BLOCK_SIZE, C.MIN_BLOCK,
                                                          C.PREFERRED_BLOCK, C.MAX_PAYLOAD)))
        out.append(reply(opt, C.REP_ACK))
        if opt == C.OPT_INFO:
            return b"".join(out), None
        return b"".join(out), Negotiated(exp, flags, self.structured, self._contexts_for(exp.name))

    def _refused(self, opt: int, name: str, why: str) -> bytes:
        """The answer for an export ``access`` refused (``why`` is also logged)."""
        if isinstance(why, NeedsTLS) and self.tls == "on" and not self.tls_active:
            return error(opt, C.REP_ERR_TLS_REQD, f"export {name!r} needs TLS with a client "
                                                  f"certificate: send STARTTLS")
        return error(opt, C.REP_ERR_POLICY, why)

    def _contexts_for(self, name: str) -> dict[int, str]:
        if self.meta_export != name:
            return {}
        # asked again: a rule set since SET_META_CONTEXT hides a context from now on
        offered = set(self.contexts(name))
        return {cid: c for cid, c in self.meta.items() if c == C.BASE_ALLOCATION or c in offered}

    def _meta_context(self, opt: int, data: bytes) -> bytes:
        if len(data) < 8:
            raise _Bad("meta context data too short")
        (n,) = struct.unpack_from(">I", data)
        if n > len(data) - 8:
            raise _Bad("export name length overruns the option")
        name = _decode(data[4:4 + n])
        (count,) = struct.unpack_from(">I", data, 4 + n)
        pos, queries = 8 + n, []
        for _ in range(count):
            if pos + 4 > len(data):
                raise _Bad("query length overruns the option")
            (qn,) = struct.unpack_from(">I", data, pos)
            if pos + 4 + qn > len(data):
                raise _Bad("query overruns the option")
            queries.append(_decode(data[pos + 4: pos + 4 + qn]))
            pos += 4 + qn
        if pos != len(data):
            raise _Bad("trailing bytes after the queries")
        if None in queries or name is None:
            raise _Bad("string is not valid UTF-8")
        if not self.structured:
            raise _Bad("negotiate STRUCTURED_REPLY first")
        if opt == C.OPT_SET_META_CONTEXT:
            self.meta, self.meta_export = {}, name   # replaced even when it fails
        exp = self.lookup(name)
        if exp is None:
            return error(opt, C.REP_ERR_UNKNOWN, f"no export named {name!r}")
        why = self._allowed(exp)
        if isinstance(why, str):
            return self._refused(opt, name, why)
        if opt == C.OPT_SET_META_CONTEXT:
            self.meta_export = exp.name   # canonical: "" (default export) matches GO by either name
        offered = [C.BASE_ALLOCATION] + [c for c in self.contexts(exp.name) if c != C.BASE_ALLOCATION]
        if opt == C.OPT_SET_META_CONTEXT:
            # exact names only: a bare "base:" selects nothing in SET (proto.md)
            matched = [c for c in offered if c in queries]
        elif not queries:
            matched = offered
        else:
            matched = [c for c in offered if any(_matches(q, c) for q in queries)]
        out = []
        for i, ctx in enumerate(matched):
            cid = 0 if opt == C.OPT_LIST_META_CONTEXT else i + 1   # ids: unique per SET
            if opt == C.OPT_SET_META_CONTEXT:
                self.meta[cid] = ctx
            out.append(reply(opt, C.REP_META_CONTEXT, struct.pack(">I", cid) + ctx.encode()))
        out.append(reply(opt, C.REP_ACK))
        return b"".join(out)


def _matches(query: str, ctx: str) -> bool:
    """A LIST query names ``ctx``, or a prefix of it that ends with ":"."""
    return query == ctx or query.endswith(":") and ctx.startswith(query)


def _decode(b: bytes) -> str | None:
    if len(b) > C.MAX_STRING or b"\0" in b:
        return None
    try:
        return b.decode()
    except UnicodeDecodeError:
        return None
