"""What a logical disk is, and which changes of that are allowed.

An LD's role decides how it takes part in a sharing tree and how its space is
paid for; it changes only along ``TRANSITIONS`` (by the operations in ops.py that
are named there), never by editing loose attributes.

    LUN                a disk of its own (alone, the newest LD of a chain, or after
                       a revert next to the snapshot it reverted to)
    SNAPSHOT           point-in-time copy taking space on demand; when a copy on
                       first write finds none, it is invalidated
    RESERVED_SNAPSHOT  point-in-time copy whose full copy was reserved at creation
    COPYING_CLONE      snapclone still in its tree: BGCOPY copies what it shares,
                       paid from its reservation
    CLONE              snapclone that left its tree: an ordinary disk
    INVALID            lost data it needed (space ran out): every read and write
                       fails with EIO; it holds nothing and can only be deleted
"""

from __future__ import annotations

from enum import Enum

from ..errors import InvalidArgument


# Attributes by which an LD names the LD it was made from (its origin).
ORIGIN_ATTRS = ("snapshot_of", "snapclone_of")
# NBD access rules (vsand/access.py ATTRS): a snapshot or snapclone starts with its
# source's, so a copy of a guarded LUN is not open to everyone
ACCESS_ATTRS = ("allow_cert", "readonly_for")


class Role(str, Enum):
    LUN = "lun"
    SNAPSHOT = "snapshot"
    RESERVED_SNAPSHOT = "reserved-snapshot"
    COPYING_CLONE = "copying-clone"
    CLONE = "clone"
    INVALID = "invalid"

    @property
    def reserved(self) -> bool:
        """Its copies are paid from a reservation made at creation."""
        return self in (Role.RESERVED_SNAPSHOT, Role.COPYING_CLONE)

    @property
    def copying(self) -> bool:
        return self is Role.COPYING_CLONE

    @property
    def invalid(self) -> bool:
        return self is Role.INVALID

    @property
    def snapshot(self) -> bool:
        return self in (Role.SNAPSHOT, Role.RESERVED_SNAPSHOT)


# role -> the roles it may become, and the operation (ops.py record) that does it
TRANSITIONS: dict[Role, dict[Role, str]] = {
    Role.LUN: {},
    # A reserved snapshot or a copying clone pays its copies from a reservation and is
    # never invalidated by design; the transition exists so that an accounting error
    # costs that LD, not the write that found no space.
    Role.SNAPSHOT: {Role.INVALID: "inv"},
    Role.RESERVED_SNAPSHOT: {Role.INVALID: "inv"},
    Role.COPYING_CLONE: {Role.CLONE: "cdet", Role.INVALID: "inv"},
    Role.CLONE: {},
    Role.INVALID: {},
}


def check_transition(old: Role, new: Role, op: str) -> None:
    if TRANSITIONS[old].get(new) != op:
        raise InvalidArgument(f"an LD cannot go from {old.value} to {new.value} (by {op!r})")


def kind(role: Role, attrs: dict) -> str:
    """What an administrator calls the LD: "lun", "snapshot" or "snapclone" (copying
    or independent); an invalidated one keeps the kind it was created as."""
    if role is Role.LUN:
        return "lun"
    if role in (Role.COPYING_CLONE, Role.CLONE) or "snapclone_of" in attrs:
        return "snapclone"
    return "snapshot"


def created_as(snapshot: bool, reserve: bool, clone: bool) -> Role:
    if clone:
        return Role.COPYING_CLONE
    if snapshot:
        return Role.RESERVED_SNAPSHOT if reserve else Role.SNAPSHOT
    return Role.LUN
