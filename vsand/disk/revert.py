"""Revert: a LUN reads like any snapshot of its chain, at once (issue 13).

The map work is ``sharing.revert`` (operation ``rvt``): the LUN takes the
snapshot's map and place, the snapshot reads everything through it, and the LUN's
old map either stays as a new snapshot (``keep``) or goes like a deleted LD's. No
data moves, every other LD of the chain reads as before, newer snapshots included
(ZFS can only roll back to the latest and destroys newer ones; rbd copies data).
This module holds the policy: what may be reverted to what, and the space it needs.
"""

from __future__ import annotations

from ..errors import InvalidArgument, NoSpace
from ..units import format_size
from . import sharing
from .role import ACCESS_ATTRS, Role

TARGETS = (Role.LUN, Role.CLONE)    # disks of their own; a snapshot is not reverted


def record(pool, name: str, to: str, keep: str | None) -> dict:
    """The ``rvt`` record that makes ``name`` read like ``to``, after every check."""
    x, s = pool.get(name), pool.get(to)
    if x.role not in TARGETS:
        raise InvalidArgument(f"{name} is a {x.role.value}: only a LUN or an independent "
                              f"snapclone can be reverted")
    chain = sharing.chain_of(x)
    if s is x or s not in chain:
        raise InvalidArgument(f"{to} is not a snapshot in the chain of {name} "
                              f"({', '.join(ld.name for ld in chain if ld is not x) or 'it has none'})")
    if not s.role.snapshot:
        raise InvalidArgument(f"{to} is a {s.role.value}, not a snapshot")
    busy = [ld.name for ld in chain if ld.role.copying]
    if busy:
        raise InvalidArgument(f"snapclone {busy[0]} still depends on this chain; revert when its "
                              f"copy is done (`vsanctl snapclone copy {busy[0]}` restarts a "
                              f"cancelled one) or after deleting it")
    if x.attrs.get("protected") and keep is None:
        # its bytes before the revert would be freed: a protected LD keeps them
        raise InvalidArgument(f"{name} is protected: a revert would free its current data; "
                              f"add --keep NEWNAME to keep it as a snapshot")
    rec = {"t": "rvt", "id": x.id, "to": s.id}
    if keep is not None:
        pool.catalog.check_name(keep)
        # it holds x's data as it was: the same access rules guard it (pool.snapshot)
        rec["keep"] = {"id": pool.catalog.next_id, "name": keep,
                       "attrs": {"snapshot_of": x.name, "reverted_from": True,
                                 **{k: x.attrs[k] for k in ACCESS_ATTRS if k in x.attrs}}}
    if s.role.reserved:
        # s will read everything through x: its reservation grows to a full copy
        more = s.allocated_segments()
        need = pool.space.reserved_psegs(s.ldad, extra=(s.raid, more))
        if need > pool.allocator.free_psegs(s.ldad):
            raise NoSpace(f"{to} is a reserved snapshot: after the revert it needs "
                          f"{format_size(more * pool.units.segment)} more reserved, which "
                          f"the pool does not have")
    pool.tx.ensure_meta_reserve(extra=x.l2.nsegs if keep is not None else 0)
    return rec
