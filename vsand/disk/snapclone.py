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
from ..mapping.lmap import ALLOCATED, SP, SS, STATE_MASK
from . import sharing

MODES = ("eager", "scaling")
DEFAULT_MODE = "scaling"    # measured better for foreground writes: README, "Measured"
QUIESCE_M = 64        # phase 2 finishes with the loop held when fewer remain (Fig. 15d)
MAX_SCANS = 64        # LMAPs one BGCOPY plan looks at, so planning stays short on huge LDs


def in_tree(ld) -> bool:
    return ld.attrs.get("clone") == "copying"


def mode(pool) -> str:
    return str(pool.settings.get("snapclone", DEFAULT_MODE))


# ---- bulk views of a chain --------------------------------------------------------------
def put(ld, lo: int, arr: np.ndarray) -> None:
    sharing.put_entries(ld.l2, lo, arr)
    g = ld.l2.gens
    if g is not None:
        g[lo >> ld.l2.shift] += 1
    ld.pool.journal.touch_lmaps(ld.id, [lo >> ld.l2.shift])


def ranges(ld):
    per, n = ld.l2.per, ld.l2.nsegs
    for li in range(-(-n // per)):
        yield li * per, min(n, (li + 1) * per)


def copy_need(ld) -> int:
    """Allocated segments ``ld`` reads through its successors: what phase 1 copies."""
    n = 0
    for lo, hi in ranges(ld):
        e = ld.l2.entries(lo, hi)
        sel = (e & SS) != 0
        if sel.any():
            n += int(np.count_nonzero(sharing.resolve_range(ld, lo, hi)[sel] & STATE_MASK))
    return n


def resolved_allocated(ld) -> int:
    """Allocated segments ``ld`` reads (own or through successors)."""
    return sum(int(np.count_nonzero(sharing.resolve_range(ld, lo, hi) & STATE_MASK)) for lo, hi in ranges(ld))


# ---- phase 1: copy into the clone (bgcopy.py does the copying) ------------------------
def shared_left(c) -> int:
    return sum(int(np.count_nonzero(c.l2.entries(lo, hi) & SS)) for lo, hi in ranges(c))


# ---- phase 2: what the predecessor still reads through the clone ------------------------
def pred_pending(c, lo: int, hi: int) -> np.ndarray:
    q, x = c.pred, c.succ
    if q is None:
        return np.zeros(hi - lo, dtype=bool)
    need = ((q.l2.entries(lo, hi) & SS) != 0) & ((c.l2.entries(lo, hi) & SP) != 0)
    if x is not None:
        need &= (x.l2.entries(lo, hi) & SP) == 0
    return need


def pred_left(c) -> int:
    return sum(int(np.count_nonzero(pred_pending(c, lo, hi))) for lo, hi in ranges(c))


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
    for li, (lo, hi) in enumerate(ranges(c)):
        ce = c.l2.entries(lo, hi)
        assert not np.any(ce & SS), "detach with shared segments"
        if x is not None:
            xe = x.l2.entries(lo, hi)
            keep = (ce & SP) != 0 if q is not None else np.zeros(hi - lo, dtype=bool)
            _overwrite(x, li, np.where(keep, xe, xe & ~np.uint32(SP)).astype(np.uint32))
        _overwrite(c, li, (ce & ~np.uint32(SP)).astype(np.uint32))
    # Every LMAP of both is present now; the fills follow the same rule, as a later
    # delete merges fills of LMAPs absent everywhere by the same bit rules.
    if x is not None and not (q is not None and c.l2.fill & SP):
        x.l2.fill &= ~SP
    c.l2.fill &= ~(SP | SS)
    if q is not None:
        q.succ = x
    if x is not None:
        x.pred = q
    c.pred = c.succ = None
    sharing.end_fills(q, x)
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


def check_mode(value) -> str:
    if value not in MODES:
        raise InvalidArgument(f"snapclone mode must be one of {', '.join(MODES)}, not {value!r}")
    return value
