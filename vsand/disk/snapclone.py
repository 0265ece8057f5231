"""Snapclones and BGCOPY (DESIGN.md §8, patent Figs. 13-15).

A snapclone C of X is linked like a snapshot (C becomes X's predecessor, with a
reservation for what it will copy). BGCOPY then works in two phases:

1. *copy*: every segment C still reads through its successor is copied into a new
   segment of C; C.Ss is cleared and X.Sp is **kept** (the seed of Fig. 13e). A kept
   bit over a pair that no longer shares means "the predecessor holds its own copy,
   equal to my content": a write to X clears it (CFW without a copy), and so does a
   write to C (sharing.unshare).
2. *leave*: C's predecessor Q may still read segments through C that X no longer
   holds (Q.Ss & C.Sp & ~X.Sp); those are copied into Q. When fewer than M remain
   they are copied in one go with the event loop held (the quiesce of Fig. 15d) and
   C leaves the tree: X.Sp &= C.Sp (Fig. 14: cleared without a predecessor,
   inherited from C otherwise), Q and X are linked, and C is an ordinary LD.

The pool setting ``snapclone`` chooses who preserves data for Q on a write to X:
``eager`` (Figs. 13f-13g: the CFW into C also copies into Q, so phase 2 finds
little) or ``scaling`` (Fig. 15: plain CFW, phase 2 copies the rest). Keeping
X.Sp where the patent keeps it for a snapclone predecessor is not needed: we
clear it only where C.Sp is clear, which loses a seed, never data.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from ..faults import crashpoint
from ..mapping.lmap import ALLOCATED, SP, SS, STATE_MASK, entry_rsd, entry_slot
from . import sharing

MODES = ("eager", "scaling")
DEFAULT_MODE = "eager"
QUIESCE_M = 64        # phase 2 finishes with the loop held when fewer remain (Fig. 15d)
MAX_SCANS = 64        # LMAPs one copy step looks at, so a step stays short on huge LDs


def in_tree(ld) -> bool:
    return ld.attrs.get("clone") == "copying"


def mode(pool) -> str:
    return str(pool.settings.get("snapclone", DEFAULT_MODE))


# ---- bulk views of a chain --------------------------------------------------------------
def _resolved(ld, lo: int, hi: int) -> np.ndarray:
    """The entries that hold ``ld``'s data for segments lo..hi (mine or a successor's)."""
    res = ld.l2.entries(lo, hi)
    pending = (res & SS) != 0
    m = ld
    while pending.any():
        m = m.succ
        se = m.l2.entries(lo, hi)
        res[pending] = se[pending]
        pending &= (se & SS) != 0
    return res


def _put(ld, lo: int, arr: np.ndarray) -> None:
    sharing.put_entries(ld.l2, lo, arr)
    g = ld.l2.gens
    if g is not None:
        g[lo >> ld.l2.shift] += 1
    ld.pool.journal.touch_lmaps(ld.id, [lo >> ld.l2.shift])


def _ranges(ld):
    per, n = ld.l2.per, ld.l2.nsegs
    for li in range(-(-n // per)):
        yield li * per, min(n, (li + 1) * per)


def copy_need(ld) -> int:
    """Allocated segments ``ld`` reads through its successors: what phase 1 copies."""
    n = 0
    for lo, hi in _ranges(ld):
        e = ld.l2.entries(lo, hi)
        sel = (e & SS) != 0
        if sel.any():
            n += int(np.count_nonzero(_resolved(ld, lo, hi)[sel] & STATE_MASK))
    return n


def resolved_allocated(ld) -> int:
    """Allocated segments ``ld`` reads (own or through successors)."""
    return sum(int(np.count_nonzero(_resolved(ld, lo, hi) & STATE_MASK)) for lo, hi in _ranges(ld))


# ---- phase 1: copy into the clone ---------------------------------------------------------
def copy_step(c, start: int, budget: int) -> tuple[int, int, int]:
    """Unshares segments of clone ``c`` from segment ``start`` on, copying at most
    ``budget`` allocated ones. Returns (next start, segments handled, bytes copied)."""
    seg = c.seg
    handled = copied = 0
    per = c.l2.per
    k = start
    scans = 0
    while k < c.l2.nsegs and copied < budget and scans < MAX_SCANS:
        scans += 1
        lo = k - (k % per)
        hi = min(c.l2.nsegs, lo + per)
        ce = c.l2.entries(lo, hi)
        pend = ((ce & SS) != 0)
        pend[: k - lo] = False
        if not pend.any():
            k = hi
            continue
        res = _resolved(c, lo, hi)
        # unallocated holders: C owns "zeros" from now on, no data moves (one bulk edit)
        holes = pend & ((res & STATE_MASK) == 0)
        if holes.any():
            ce[holes] &= SP
            _put(c, lo, ce)
            handled += int(np.count_nonzero(holes))
        for j in np.flatnonzero(pend & ~holes).tolist():
            if copied >= budget:
                return lo + j, handled, copied * seg
            _copy_into_clone(c, lo + j, int(res[j]))
            copied += 1
            handled += 1
        k = hi
    return k, handled, copied * seg


def _copy_into_clone(c, k: int, holder_entry: int) -> None:
    pool = c.pool
    data = pool.rio.read(c.raid, pool.space.members(c.table, entry_rsd(holder_entry)),
                         entry_slot(holder_entry), 0, c.seg)
    ne, _ = pool.space.alloc_segment(c, use_reserve=True)
    members = pool.space.members(c.table, entry_rsd(ne))
    pool.intend(c.table, entry_rsd(ne))
    pool.rio.write(c.raid, members, entry_slot(ne), 0, data)
    crashpoint("bgcopy.after_copy")
    c.l2.set(k, (c.l2.get(k) & SP) | ne)      # Ss cleared; the successor's Sp stays (seed)
    pool.space.note_handover(c)
    pool.journal.touch(c.id, k)


def shared_left(c) -> int:
    return sum(int(np.count_nonzero(c.l2.entries(lo, hi) & SS)) for lo, hi in _ranges(c))


# ---- phase 2: what the predecessor still reads through the clone ------------------------
def _pred_pending(c, lo: int, hi: int) -> np.ndarray:
    q, x = c.pred, c.succ
    if q is None:
        return np.zeros(hi - lo, dtype=bool)
    need = ((q.l2.entries(lo, hi) & SS) != 0) & ((c.l2.entries(lo, hi) & SP) != 0)
    if x is not None:
        need &= (x.l2.entries(lo, hi) & SP) == 0
    return need


def pred_left(c) -> int:
    return sum(int(np.count_nonzero(_pred_pending(c, lo, hi))) for lo, hi in _ranges(c))


def pred_step(c, budget: int | None) -> tuple[int, int]:
    """Gives C's predecessor its own copy of up to ``budget`` segments it would lose
    when C leaves (None: all of them). Returns (segments handled, bytes copied)."""
    handled = copied = 0
    for lo, hi in _ranges(c):
        need = _pred_pending(c, lo, hi)
        for j in np.flatnonzero(need).tolist():
            if budget is not None and handled >= budget:
                return handled, copied
            if give_pred_copy(c, lo + j):
                copied += c.seg
            handled += 1
    return handled, copied


def give_pred_copy(c, k: int) -> bool:
    """C's predecessor Q reads segment k through C: give Q its own copy of C's data
    for k (Fig. 13f) and end that pair's sharing. Returns True if bytes were copied.
    Q pays like any snapshot: from its reservation, or it is invalidated."""
    q = c.pred
    qe = q.l2.get(k)
    ce = c.l2.get(k)
    assert qe & SS and not ce & SS
    new = 0
    if ce & ALLOCATED:
        new = sharing.copy_for_pred(c, q, k, ce)
        if new is None:                       # Q was invalidated instead
            c.l2.set(k, ce & ~SP)
            c.pool.journal.touch(q.id, k)
            c.pool.journal.touch(c.id, k)
            return False
    q.l2.set(k, (qe & SP) | new)
    c.l2.set(k, ce & ~SP)
    c.pool.journal.touch(q.id, k)
    c.pool.journal.touch(c.id, k)
    return bool(new)


# ---- leaving the tree (Fig. 14) -------------------------------------------------------------
def detach(c) -> None:
    """C shares nothing any more and Q reads nothing through it that X lacks: C leaves
    the chain. Pure map work, replayed from the "cdet" record."""
    q, x = c.pred, c.succ
    for li, (lo, hi) in enumerate(_ranges(c)):
        ce = c.l2.entries(lo, hi)
        assert not np.any(ce & SS), "detach with shared segments"
        if x is not None:
            xe = x.l2.entries(lo, hi)
            keep = (ce & SP) != 0 if q is not None else np.zeros(hi - lo, dtype=bool)
            _overwrite(x, li, np.where(keep, xe, xe & ~np.uint32(SP)).astype(np.uint32))
        _overwrite(c, li, (ce & ~np.uint32(SP)).astype(np.uint32))
    # Every LMAP of both is present now, so the fills only cover what lies past the end.
    if x is not None:
        x.l2.fill &= ~SP
    c.l2.fill &= ~(SP | SS)
    if q is not None:
        q.succ = x
    if x is not None:
        x.pred = q
    c.pred = c.succ = None
    sharing.reset_chain(c)
    if q is not None or x is not None:
        sharing.reset_chain(q if q is not None else x)
    c.attrs["clone"] = "independent"
    c.attrs.pop("space", None)


def _overwrite(ld, li: int, arr: np.ndarray) -> None:
    if ld.l2.lmaps[li] is None:
        ld.l2.ensure(li)
    ld.l2.lmaps[li][: len(arr)] = arr
    ld.pool.journal.touch_lmaps(ld.id, [li])


# ---- the driver the background task calls ---------------------------------------------------
def step(pool, c, budget: int) -> dict:
    """One BGCOPY step on clone ``c``: phase 1 while C shares segments, then phase 2
    and leaving the tree. Synchronous; the caller yields between steps."""
    st = pool.bgcopy_state.setdefault(c.id, {"cursor": 0, "left": None})
    if not in_tree(c):
        return {"copied": 0, "bytes": 0, "remaining": 0, "done": True, "phase": "done"}
    if st["left"] is None:
        st["left"] = shared_left(c)
    handled = nbytes = 0
    if st["left"] or st["cursor"]:
        nxt, handled, nbytes = copy_step(c, st["cursor"], budget)
        st["left"] = max(0, st["left"] - handled)
        st["cursor"] = nxt if nxt < c.l2.nsegs else 0
        if not st["cursor"]:
            st["left"] = shared_left(c)        # CFWs may have unshared some meanwhile
        if st["left"] or st["cursor"]:
            return {"copied": handled, "bytes": nbytes, "remaining": st["left"],
                    "done": False, "phase": "copy"}
    left = pred_left(c)
    if left >= QUIESCE_M:
        h, b = pred_step(c, budget)
        return {"copied": handled + h, "bytes": nbytes + b, "remaining": max(0, left - h),
                "done": False, "phase": "leave"}
    # Fewer than M left: copy them with the loop held (no I/O can interleave), leave.
    h, b = pred_step(c, None)
    pool.leave_tree(c)
    pool.bgcopy_state.pop(c.id, None)
    return {"copied": handled + h, "bytes": nbytes + b, "remaining": 0, "done": True,
            "phase": "done"}


def state(pool, c) -> dict:
    if not in_tree(c):
        return {"remaining": 0, "phase": "done", "done": True}
    left = shared_left(c)
    if left:
        return {"remaining": left, "phase": "copy", "done": False}
    return {"remaining": pred_left(c), "phase": "leave", "done": False}


def check_mode(value) -> str:
    if value not in MODES:
        raise InvalidArgument(f"snapclone mode must be one of {', '.join(MODES)}, not {value!r}")
    return value
