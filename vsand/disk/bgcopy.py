"""BGCOPY steps (DESIGN.md §8): plan on the event loop, copy bytes off it, apply on it.

A step is planned on the loop (which segments, new segments allocated), its bytes
are copied by ``Plan.io`` — safe to run in a worker thread, it touches only drives,
through member lists fixed at planning — and ``Plan.finish`` applies the result on
the loop. A copy applies only if what it copied is still what the map says: while a
segment is shared its bytes are never overwritten in place (CFW hands allocations
over), so "the clone still reads it through the same entry" means the bytes are
the ones copied. Anything else (a CFW handed the segment over meanwhile, the clone
was written or deleted) discards the copy and frees its new segment.

Phase 1 copies into the clone what it still shares; phase 2 copies into the clone's
predecessor what it would lose when the clone leaves; when fewer than
``snapclone.QUIESCE_M`` of those remain they are copied in one go on the loop,
which no request can interleave with (the quiesce of Fig. 15d), and the clone
leaves the tree.
"""

from __future__ import annotations

import numpy as np

from ..errors import NoSpace, NotFound
from ..faults import crashpoint
from ..mapping.lmap import ALLOCATED, DATA_MASK, SP, SS, entry_rsd, entry_slot, owned
from . import sharing, snapclone
from .cfw import give_pred_copy, reserved_reader


class Job:
    __slots__ = ("dst", "dstm", "k", "new", "payer", "phase", "src", "src_entry")

    def __init__(self, phase, k, dst, src_entry, new, src, dstm, payer=None):
        self.phase, self.k, self.dst, self.src_entry, self.new = phase, k, dst, src_entry, new
        self.src, self.dstm, self.payer = src, dstm, payer


class Plan:
    def __init__(self, pool, c, jobs, handled: int, phase: str, remaining: int, copies_left: int):
        """``remaining``: segments left to settle after this step; ``copies_left``:
        those of them that need a copy (an estimate, recounted every pass)."""
        self.pool, self.c, self.jobs = pool, c, jobs
        self.handled, self.phase, self.remaining = handled, phase, remaining
        self.copies_left = copies_left
        self.error: BaseException | None = None
        # its member lists must stay valid until finish: no rebuild switches meanwhile
        self.pinned = bool(jobs)
        pool.space.pinned += self.pinned

    def io(self) -> None:
        """Copies the planned segments; no map or pool state is touched."""
        rio, raid, seg = self.pool.rio, self.c.raid, self.c.seg
        try:
            for j in self.jobs:
                data = rio.read(raid, j.src, entry_slot(j.src_entry), 0, seg)
                # No write intent (sharing._copy_into_new says why).
                rio.write(raid, j.dstm, entry_slot(j.new), 0, data)
                crashpoint("bgcopy.after_copy")
        except BaseException as e:  # noqa: BLE001 (re-raised on the loop by finish())
            self.error = e

    def finish(self) -> dict:
        pool, c = self.pool, self.c
        pool.space.pinned -= self.pinned
        self.pinned = False
        applied = 0
        alive = pool.catalog.by_id.get(c.id) is c and c.role.copying
        for j in self.jobs:
            if self.error is None and alive and _still(c, j):
                _apply(c, j)
                applied += 1
            else:
                pool.space.free_segment(j.dst, j.new)
        if self.error is not None:
            raise self.error
        if not alive:
            raise NotFound(f"snapclone {c.name} no longer exists")
        return {"copied": self.handled + applied, "bytes": applied * c.seg,
                "remaining": self.remaining, "done": False, "phase": self.phase,
                "work": applied, "work_left": self.copies_left}


def _still(c, j: Job) -> bool:
    k = j.k
    if j.phase == "copy":
        return bool(c.l2.get(k) & SS) and (sharing.holder(c, k)[1] & DATA_MASK) == (j.src_entry & DATA_MASK)
    q = c.pred
    ce = c.l2.get(k)
    return (q is j.dst and bool(q.l2.get(k) & SS) and bool(ce & SP)
            and (ce & DATA_MASK) == (j.src_entry & DATA_MASK)
            and (c.succ is None or not c.succ.l2.get(k) & SP))


def _apply(c, j: Job) -> None:
    pool, k = c.pool, j.k
    if j.phase == "copy":
        pool.ops.set_entry(c, k, (c.l2.get(k) & SP) | j.new)   # Ss cleared; the successor's Sp stays (seed)
        pool.space.note_handover(c)
        return
    q = j.dst
    pool.ops.set_entry(q, k, (q.l2.get(k) & SP) | j.new)
    pool.ops.set_entry(c, k, c.l2.get(k) & ~SP)
    if j.payer is not None:
        pool.space.note_handover(j.payer)


# ---- planning -------------------------------------------------------------------------------
def _plan_copy(c, state: dict, budget: int) -> tuple[list, int]:
    """Phase 1 from ``state["cursor"]``: unallocated holders are settled at once (no
    data), allocated ones become jobs (at most ``budget``)."""
    pool = c.pool
    jobs, handled = [], 0
    per, n = c.l2.per, c.l2.nsegs
    k = state["cursor"]
    scans = 0
    while k < n and len(jobs) < budget and scans < snapclone.MAX_SCANS:
        scans += 1
        lo = k - (k % per)
        hi = min(n, lo + per)
        ce = c.l2.entries(lo, hi)
        pend = (ce & SS) != 0
        pend[: k - lo] = False
        if not pend.any():
            k = hi
            continue
        res = sharing.resolve_range(c, lo, hi)
        holes = pend & ~owned(res)
        if holes.any():            # the clone owns "zeros" from now on: one bulk edit
            ce[holes] &= SP
            pool.ops.put_entries(c, lo, ce)
            handled += int(np.count_nonzero(holes))
        k = hi
        for j in np.flatnonzero(pend & ~holes).tolist():
            if len(jobs) >= budget:
                k = lo + j
                break
            he = int(res[j])
            try:
                ne, _ = pool.space.alloc_segment(c, use_reserve=True)
            except NoSpace:
                if not jobs:
                    raise
                # the segments already taken belong to the jobs planned: run those
                state["cursor"] = lo + j
                return jobs, handled
            jobs.append(Job("copy", lo + j, c, he, ne, pool.space.members(c.table, entry_rsd(he)),
                            pool.space.members(c.table, entry_rsd(ne))))
    state["cursor"] = k if k < n else 0
    return jobs, handled


def _plan_pred(c, budget: int | None) -> tuple[list, int]:
    """Phase 2: jobs giving C's predecessor its own copy of what it reads through C
    and C's successor no longer holds."""
    pool, q = c.pool, c.pred
    jobs, handled = [], 0
    for lo, hi in c.l2.ranges():
        for j in np.flatnonzero(sharing.pred_pending(c, lo, hi)).tolist():
            if budget is not None and len(jobs) >= budget:
                return jobs, handled
            k = lo + j
            ce = c.l2.get(k)
            if not ce & ALLOCATED:          # nothing to copy: settle it now
                give_pred_copy(c, k)
                handled += 1
                continue
            payer = reserved_reader(q, k)
            try:
                ne, _ = pool.space.alloc_segment(q, use_reserve=payer is not None)
            except NoSpace:
                give_pred_copy(c, k)     # finds no space either: invalidates q
                handled += 1
                continue
            jobs.append(Job("pred", k, q, ce, ne, pool.space.members(c.table, entry_rsd(ce)),
                            pool.space.members(q.table, entry_rsd(ne)), payer))
    return jobs, handled


def plan(pool, c, budget: int) -> Plan | dict:
    """The next step of clone ``c``: a Plan to run, or the final result (a dict) when
    the clone left its tree during planning."""
    if not c.role.copying:
        return {"copied": 0, "bytes": 0, "remaining": 0, "done": True, "phase": "done",
                "work": 0, "work_left": 0}
    pool.tx.writable()
    # "left": segments of this pass still to settle; "work": those needing a copy
    st = pool.bgcopy_state.setdefault(c.id, {"cursor": 0, "left": None, "work": 0})
    if st["left"] is None:
        st["left"], st["work"] = snapclone.shared_left(c), snapclone.copies_left(c)
    if st["left"] or st["cursor"]:
        jobs, handled = _plan_copy(c, st, budget)
        st["left"] = max(0, st["left"] - handled - len(jobs))
        st["work"] = max(0, st["work"] - len(jobs))
        if not st["cursor"]:      # a pass ended: count again (CFWs unshared some)
            st["left"] = max(0, snapclone.shared_left(c) - len(jobs))
            st["work"] = max(0, snapclone.copies_left(c) - len(jobs))
        if jobs or st["left"] or st["cursor"]:
            return Plan(pool, c, jobs, handled, "copy", st["left"], st["work"])
    # A copy is dropped when its segment's holder changed meanwhile (e.g. a newer clone
    # copied it first) though the clone still shares it: the next pass takes it again.
    left = snapclone.shared_left(c)
    if left:
        st["left"], st["cursor"], st["work"] = left, 0, snapclone.copies_left(c)
        return Plan(pool, c, [], 0, "copy", left, st["work"])
    left, copies = snapclone.pred_counts(c)
    if left >= snapclone.QUIESCE_M:
        jobs, handled = _plan_pred(c, budget)
        return Plan(pool, c, jobs, handled, "leave", max(0, left - handled - len(jobs)),
                    max(0, copies - len(jobs)))
    # Fewer than M left: copy them here, with the loop held, and leave the tree.
    p = Plan(pool, c, *_plan_pred(c, None), "leave", 0, 0)
    p.io()
    r = p.finish()
    pool.leave_tree(c)
    r.update(done=True, phase="done", remaining=0)
    return r


def step(pool, c, budget: int) -> dict:
    """One whole step on the calling thread (tests, tools)."""
    p = plan(pool, c, budget)
    if isinstance(p, dict):
        return p
    p.io()
    return p.finish()
