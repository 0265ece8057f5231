"""The control protocol: framing and the table of operations.

A frame is a 4-byte big-endian length and a msgpack map. Request:
``{"op": NAME, "args": {...}}``; reply: ``{"ok": True, "result": ...}`` or
``{"ok": False, "error": MESSAGE, "errno": N}``. A successful reply may carry
``"warnings": [MESSAGE, ...]``: the operation was done, but the admin should know
something (vsanctl prints them on stderr).
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

FRAME = struct.Struct(">I")
# A request is an op and a few names and numbers: far below 1 MiB. The daemon refuses
# a longer one from its length alone, so a client cannot make it hold memory by
# promising a big frame. Replies (lun list of a large pool) may be longer.
MAX_REQUEST = 1 << 20
MAX_REPLY = 16 << 20

class Warned(NamedTuple):
    """A handler's result with warnings for the reply."""
    result: Any
    warnings: list[str]


# op -> {arg: (type, required)}
OPS: dict[str, dict[str, tuple[type, bool]]] = {
    "status": {},
    "lun.create": {"name": (str, True), "size": (int, True), "raid": (int, False),
                   "thick": (bool, False), "ldad": (str, False)},
    # lun.list filters: snapshots_of (LDs whose origin is NAME), chain (NAME's
    # sharing chain, oldest first), kind (schema.KINDS)
    "lun.list": {"snapshots_of": (str, False), "chain": (str, False), "kind": (str, False)},
    "lun.show": {"name": (str, True)},
    "lun.resize": {"name": (str, True), "size": (int, False), "delta": (int, False),
                   "allow_shrink": (bool, False)},
    "lun.delete": {"name": (str, True), "force": (bool, False)},
    "lun.rename": {"name": (str, True), "new_name": (str, True)},
    # allow_cert, readonly_for: replace the LD's access rules ([] clears them; access.py)
    "lun.set": {"name": (str, True), "read_only": (bool, False), "protect": (bool, False),
                "allow_cert": (list, False), "readonly_for": (list, False)},
    "lun.revert": {"name": (str, True), "to": (str, True), "keep": (str, False), "force": (bool, False)},
    "drive.list": {},
    "drive.fail": {"index": (int, True)},
    "drive.remove": {"index": (int, True)},
    "drive.replace": {"index": (int, True), "drive": (str, False), "size": (int, False)},
    "drive.add": {"drive": (str, False), "size": (int, False), "ldad": (str, False)},
    "snapshot.create": {"source": (str, True), "name": (str, True), "reserve": (bool, False)},
    "snapshot.delete": {"name": (str, True), "force": (bool, False)},
    "snapshot.rename": {"name": (str, True), "new_name": (str, True)},
    "tree": {"name": (str, True)},
    "du": {"name": (str, False)},
    "diff": {"name": (str, True), "since": (str, False)},
    "snapclone.create": {"source": (str, True), "name": (str, True), "rate": (int, False)},
    "snapclone.copy": {"name": (str, True), "rate": (int, False)},
    "task.list": {},
    "task.show": {"id": (int, True)},
    "task.cancel": {"id": (int, True)},
    "task.set": {"id": (int, True), "rate": (int, True)},
    "pool.get": {},
    "pool.set": {"key": (str, True), "value": (str, True)},
    "pool.rebuild": {},
    "pool.scrub": {},
    "pool.level": {},
}

# what an LD is, for lun.list --kind: a LUN, a snapshot (also an invalidated one),
# a snapclone (copying, or independent after BGCOPY)
KINDS = ("lun", "snapshot", "snapclone")

# Operations that only read. Every other op changes something and is audited (one
# INFO line: who, what, outcome, server.py): a new op is audited unless it is added
# here, so forgetting the list errs on the side of the record.
QUERIES = frozenset({"status", "lun.list", "lun.show", "du", "diff", "drive.list", "tree", "task.list",
                     "task.show", "pool.get"})


def mutating(op: str) -> bool:
    return op in OPS and op not in QUERIES


# pool.set: the settings an administrator may change, and their allowed values.
# snapclone_mode: who preserves data for a snapclone's predecessor (DESIGN.md §8):
# "eager" — a copy on first write into the clone also copies into its predecessor
# (Fig. 13f); "scaling" — plain copy on write, and BGCOPY's last pass copies what the
# predecessor needs before the clone leaves its tree (Fig. 15).
POOL_SETTINGS: dict[str, tuple[str, ...]] = {
    "snapclone_mode": ("eager", "scaling"),
}


def validate(op: str, args: dict) -> str | None:
    """An error message for a malformed request, None when it fits the schema."""
    spec = OPS.get(op)
    if spec is None:
        return f"unknown operation {op!r}"
    if not isinstance(args, dict):
        return "args must be a map"
    for k in args:
        if k not in spec:
            return f"{op}: unknown argument {k!r}"
    for k, (typ, required) in spec.items():
        if k not in args:
            if required:
                return f"{op}: missing argument {k!r}"
            continue
        v = args[k]
        if typ is int and isinstance(v, bool) or not isinstance(v, typ):
            return f"{op}: argument {k!r} must be {typ.__name__}"
    return None
