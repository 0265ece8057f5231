"""When an LD may be deleted, and what a forced delete drops (issue 13).

An admin deleting the wrong thing is the one mistake storage cannot undo, so a
delete that would hurt someone says who and needs ``--force``: connected clients
(their file systems die), dependents (snapshots and clones that name the LD as
their origin: they keep their data, since deleting passes it to them, but lose
their origin) and the read-only mark (someone meant the LD to stay as it is).
Two cases ``--force`` does not cover: a protected LD (unprotecting is the
deliberate step, as with ZFS holds) and the source of a snapclone whose copy is
still running (the copy reads through it; it ends or is cancelled first).
"""

from __future__ import annotations

from ..errors import Busy, ReadOnly


def check(ld, dependents: list, clients: int, force: bool) -> None:
    name = ld.name
    if ld.attrs.get("protected"):
        raise ReadOnly(f"{name} is protected against deletion, even with --force; "
                       f"`vsanctl lun set {name} --protect off` first")
    copying = [d.name for d in dependents if d.role.copying]
    if copying:
        raise Busy(f"{name} is the source of snapclone(s) still being copied: {', '.join(copying)}; "
                   f"wait for the copy to finish (`vsanctl task list`) or delete the snapclone(s) first")
    reasons = []
    if clients:
        reasons.append(f"has {clients} connected NBD client(s)")
    if dependents:
        reasons.append("has dependent(s) " + ", ".join(f"{d.name} ({kind(d)})" for d in dependents))
    if ld.read_only:
        reasons.append("is read-only")
    if reasons and not force:
        raise Busy(f"{name} {' and '.join(reasons)}: not deleted. --force deletes it anyway"
                   + (", disconnecting the clients" if clients else "")
                   + ("; the dependents keep their data" if dependents else ""))


def kind(ld) -> str:
    if ld.role.copying:
        return "snapclone, copying"
    if "snapclone_of" in ld.attrs:
        return "snapclone"
    return "invalid snapshot" if ld.role.invalid else "snapshot"


def dropped(result: dict) -> str:
    """What a delete's result says it dropped, in words (the daemon's log)."""
    parts = []
    if result.get("disconnected"):
        parts.append(f"{result['disconnected']} client(s) disconnected")
    if result.get("orphaned"):
        parts.append(f"{', '.join(result['orphaned'])} kept their data, their origin gone")
    return "; ".join(parts) or "it was read-only"
