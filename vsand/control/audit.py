"""The audit trail of the control plane: who changed what, and how it went.

One INFO line on the "vsand.audit" logger per operation that changes something
(schema.mutating), e.g.::

    audit: uid=0(root) pid=4242 lun.create name=demo size=1 GiB raid=5: ok
    audit: uid=1000(ann) pid=77 lun.delete name=nope: refused: no LD named 'nope'

"Who" is the kernel's word (SO_PEERCRED on the UNIX socket), not the client's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..peer import credentials, user_name
from ..units import format_size

log = logging.getLogger("vsand.audit")

SIZE_ARGS = ("size", "delta")     # arguments in bytes, shown as sizes
MAX_VALUE = 200                   # characters of one argument value in the line


@dataclass(frozen=True)
class Peer:
    pid: int | None
    uid: int | None
    user: str | None

    @classmethod
    def of(cls, writer) -> Peer:
        cred = credentials(writer.get_extra_info("socket"))
        if cred is None:
            return cls(None, None, None)
        return cls(cred[0], cred[1], user_name(cred[1]))

    def __str__(self) -> str:
        if self.uid is None:
            return "uid=? pid=?"
        return f"uid={self.uid}{f'({self.user})' if self.user else ''} pid={self.pid}"


def describe(op: str, args: dict) -> str:
    """``op k=v ...`` with sizes in binary units and long values cut."""
    parts = [op]
    for k, v in args.items():
        if k in SIZE_ARGS and isinstance(v, int) and not isinstance(v, bool):
            text = ("-" if v < 0 else "+" if k == "delta" else "") + format_size(abs(v))
        else:
            text = str(v)
        if len(text) > MAX_VALUE:
            text = text[:MAX_VALUE] + "..."
        if k not in SIZE_ARGS and (not text.isprintable() or " " in text or not text):
            text = repr(text)
        parts.append(f"{k}={text}")
    return " ".join(parts)


def audit(peer: Peer, op: str, args: dict, outcome: str) -> None:
    log.info("audit: %s %s: %s", peer, describe(op, args), outcome)
