"""Rebuild (DESIGN.md §5, seed ¶76-77): every RStore with a member on a failed drive
gets a replacement PSEG on a surviving drive of its RSS, filled from the other
members, and the RSD member is switched to it. LMAPs and L2MAPs never change.

A step works like a BGCOPY step: ``plan`` on the event loop picks the columns and
takes their new PSEGs, ``Plan.io`` copies (safe in a worker thread: it touches only
drives, through member lists fixed at planning), ``Plan.finish`` switches on the
loop. Client writes go on meanwhile, to the old members (degraded). So that none is
lost, the RStore is watched (RStoreIO.watch) from before the copy: ``finish``
finishes the writes in flight, copies again every stripe written since the copy
began, and switches; nothing can write between those on the loop. From then on
writes go to the new member. A crash before the commit that records the switch
finds the old member, i.e. the RStore still degraded, and the next start goes on.

Anything that changed under a copy (the RStore was freed, a source or the target
drive failed) discards it and frees its new PSEG; the next step plans it again.
Columns that cannot be placed (no free PSEG on a drive of the RSS that the RStore
does not use, or no free RAID1 pair) come back in ``skipped``, and those whose data
is gone (two members of a RAID5 stripe, both RAID1 copies) are counted as lost:
both stay degraded, and the task says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import IOFailure
from ..faults import crashpoint
from ..mapping.rsd import member_drives, pack_member, unpack_member


@dataclass
class Damage:
    """Columns of redundant RStores with a member on a failed drive."""

    todo: list          # (table, RSD index, column) that redundancy can rebuild
    lost: int           # RStores holding data that no redundancy holds any more

    def by_drive(self, pool) -> dict[int, int]:
        """Members left to rebuild, per failed drive."""
        out: dict[int, int] = {}
        leaving = leaving_drives(pool)
        for t, idx, col in self.todo:
            d, _ = unpack_member(t.members(idx)[col])
            if t.raid == 1 and not pool.drives[d].failed and d not in leaving:
                d = pool.allocator.partner(d)
            out[d] = out.get(d, 0) + 1
        return out


def survey(pool) -> Damage:
    """Every column to move, found in bulk over the RSD tables: on failed drives
    (rebuilt from redundancy) and on drives being removed (copied from themselves,
    RAID0 too)."""
    todo, lost = [], 0
    for t, base, _, bad, gone in _damaged(pool):
        lost += gone
        for r, c in zip(*np.nonzero(bad)):
            todo.append((t, base + int(r), int(c)))
    return Damage(todo, lost)


def _damaged(pool):
    """(table, first RSD index, rows, columns to move, RStores lost) of each block of
    the RSD tables, when a drive failed or is being removed."""
    failed = sorted(i for i, d in pool.drives.items() if d.failed)
    leaving = sorted(leaving_drives(pool))
    if not failed and not leaving:
        return
    alloc = pool.allocator
    for t in pool.space.tables.values():
        for base, rows, live in t.blocks():
            drives = member_drives(rows)
            bad = np.isin(drives, failed)
            move = np.isin(drives, leaving)
            lost = 0
            if t.raid == 0:             # RAID0 on a failed drive is lost, not moved
                bad = move & ~bad
            elif t.raid == 1:           # the stored member and its partner hold one column
                pbad = np.isin(drives, alloc.mirrored_by(failed))
                gone = bad & pbad & live[:, None]
                move |= np.isin(drives, alloc.mirrored_by(leaving))
                bad = (bad | pbad | move) & ~gone
                lost = int(np.count_nonzero(gone.any(axis=1)))
            else:
                nbad = np.count_nonzero(bad, axis=1)
                gone = live & (nbad > 1)
                lost = int(np.count_nonzero(gone))
                bad = (bad | move) & ~gone[:, None]
            bad &= live[:, None]
            yield t, base, rows, bad, lost


def left_members(pool) -> list[tuple]:
    """[(table, stored members)]: the stored member (packed, RAID1 partner not
    included) of every column ``survey`` lists, without a Python object per column:
    what the status page and ``drive list`` count, cheap for millions of PSEGs."""
    return [(t, rows[bad]) for t, _, rows, bad, _ in _damaged(pool) if bad.any()]


def left_by_drive(pool) -> dict[int, int]:
    """``survey(pool).by_drive(pool)`` in bulk: members left to move, per drive."""
    moving = [i for i, d in pool.drives.items() if d.failed] + sorted(leaving_drives(pool))
    out: dict[int, int] = {}
    for t, stored in left_members(pool):
        d = member_drives(stored)
        if t.raid == 1:                 # a working stored copy: its partner is what moves
            stays = ~np.isin(d, moving)
            if stays.any():
                uniq = np.unique(d[stays])
                partner = np.array([pool.allocator.partner(x) for x in uniq.tolist()], dtype=np.int64)
                d[stays] = partner[np.searchsorted(uniq, d[stays])]
        for drive, n in zip(*np.unique(d, return_counts=True)):
            out[int(drive)] = out.get(int(drive), 0) + int(n)
    return out


def holds(pool, drive: int) -> bool:
    """Whether any live RStore has a member (or RAID1 copy) on ``drive``."""
    mirrored = pool.allocator.mirrored_by([drive])
    for t in pool.space.tables.values():
        on = [drive] + (mirrored if t.raid == 1 else [])
        for _, rows, live in t.blocks():
            if np.isin(member_drives(rows[live]), on).any():
                return True
    return False


def leaving_drives(pool) -> set[int]:
    return {i for i, r in pool.drive_recs.items() if r.get("leaving") and not r.get("removed")}


class Move:
    """One column on its way to a new PSEG."""

    __slots__ = ("table", "idx", "col", "stored", "members", "new", "targets", "sources",
                 "nbytes", "error")

    def __init__(self, pool, table, idx, col, stored, members, new, targets):
        self.table, self.idx, self.col = table, idx, col
        self.stored, self.members, self.new, self.targets = stored, members, new, targets
        # the drives the copy reads: a working copy of a RAID1 column, the other
        # members of a RAID5 stripe
        if table.raid == 1:
            self.sources = [m for m in members[2 * col:2 * col + 2] if not pool.drives[m[0]].failed]
        else:
            self.sources = [m for i, m in enumerate(members) if i != col]
        self.nbytes = 0
        self.error: BaseException | None = None


class Plan:
    def __init__(self, pool, moves: list[Move], skipped: list, remaining: int):
        self.pool, self.moves, self.skipped, self.remaining = pool, moves, skipped, remaining

    def io(self) -> None:
        """Copies every planned column, one after the other."""
        for m in self.moves:
            self.copy(m)

    def copy(self, m: Move) -> None:
        """Copies one planned column; touches no map or pool state, so the moves of
        a plan may be copied in parallel threads."""
        try:
            m.nbytes = self.pool.rio.copy_member(m.table.raid, m.members, m.col, m.targets,
                                                 list(range(self.pool.units.rstore_segments)))
        except Exception as e:  # noqa: BLE001 (finish discards the move and reports it)
            m.error = e
        crashpoint("rebuild.after_copy")

    def finish(self) -> dict:
        """On the loop, after ``io``: the switches, durable with the next commit."""
        pool = self.pool
        pool.stripes.drain()          # writes begun before now land before the check
        switched, nbytes = 0, 0
        # One watch per RStore, whichever of its columns move: what was written
        # goes to every move of it (a move discarded must not take it from another)
        touched_by: dict = {}
        for m in self.moves:
            key_ = m.members[0]
            if key_ not in touched_by:
                touched_by[key_] = pool.rio.unwatch(m.members)
            touched = touched_by[key_]
            if m.error is None and self._still(m):
                try:
                    if touched:   # written since the copy read them: copy them again
                        nbytes += pool.rio.copy_member(m.table.raid, m.members, m.col,
                                                       m.targets, touched)
                except IOFailure as e:
                    m.error = e
                else:
                    pool.ops.switch_member(m.table, m.idx, m.col, pack_member(*m.new))
                    crashpoint("rebuild.after_switch")
                    switched += 1
                    nbytes += m.nbytes
                    continue
            _give_back(pool, m)
        failed = [(key(m), f"RStore {m.idx} (RAID{m.table.raid}) member {m.col}: "
                   + getattr(m.error, "message", str(m.error)))
                  for m in self.moves if m.error is not None]
        return {"copied": switched, "bytes": nbytes, "failed": failed,
                "skipped": [key(x) for x in self.skipped], "remaining": self.remaining}

    def _still(self, m: Move) -> bool:
        """The RStore is the one planned, and every drive the copy used still works."""
        t, drives = m.table, self.pool.drives
        return (t.alive(m.idx) and t.members(m.idx) == m.stored
                and not self.pool.space.pinned
                and not any(drives[d].failed for d, _ in m.sources + m.targets))


def plan(pool, budget: int, skip: set) -> Plan | None:
    """The next rebuild step: up to ``budget`` columns not in ``skip`` (keys
    (raid, ldad, RSD index, column) that failed this run). None when nothing is
    left to rebuild; columns that cannot be placed come back in ``skipped``."""
    pool.tx.writable()
    damage = survey(pool)
    todo = [x for x in damage.todo if key(x) not in skip]
    if not todo:
        return None
    alloc = pool.allocator
    moves, skipped = [], []
    for t, idx, col in todo:
        if len(moves) >= budget:
            break
        spare = alloc.take_spare(t.ldad, t.raid, on_drives(pool, t, idx))
        if spare is None:
            skipped.append((t, idx, col))
            continue
        moves.append(start_move(pool, t, idx, col, spare))
    return begin(pool, moves, skipped, len(todo) - len(moves) - len(skipped))


def on_drives(pool, t, idx: int) -> set[int]:
    """The drives RStore ``idx`` of table ``t`` has members on (RAID1 partners too)."""
    return {d for d, _ in pool.space.physical(t.raid, t.members(idx))}


def start_move(pool, t, idx: int, col: int, spare: tuple[int, int]) -> Move:
    """Column ``col`` of RStore ``idx`` is to go to ``spare`` (a PSEG taken for it);
    its RStore is watched from now on."""
    members = pool.space.members(t, idx)
    new = pool.space.expand(t.raid, [pack_member(*spare)])
    m = Move(pool, t, idx, col, t.members(idx), members, spare, new)
    pool.rio.watch(members)
    return m


def begin(pool, moves: list[Move], skipped: list, remaining: int) -> Plan:
    # Writes already running when the watch began may land during the copy unseen:
    # they finish first.
    pool.stripes.drain()
    crashpoint("rebuild.before_copy")
    return Plan(pool, moves, skipped, remaining)


def _give_back(pool, m: Move) -> None:
    for d, g in pool.space.physical(m.table.raid, [pack_member(*m.new)]):
        pool.allocator.free_now(d, g)


def key(x) -> tuple:
    """(RAID type, LDAD, RSD index, column): names a damaged column across steps,
    for a Move or a (table, RSD index, column)."""
    if isinstance(x, Move):
        return (x.table.raid, x.table.ldad, x.idx, x.col)
    t, idx, col = x
    return (t.raid, t.ldad, idx, col)
