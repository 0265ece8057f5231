"""Sharing trees (DESIGN.md §7-§8, patent Figs. 9-14): the share-bit rules, in one place.

Chains run ``oldest snapshot <-> ... <-> newest snapshot <-> LUN``. Per segment an
LD either owns its entry (allocated or not) or has Ss set and reads through its
successor; Sp says the predecessor reads through me. A pair agrees:
``X.Ss[k]`` implies ``succ(X).Sp[k]``. The one exception is a **seed** (Fig. 13e):
``succ(X).Sp[k]`` set while ``X.Ss[k]`` is clear means "X holds its own copy of k,
equal to its successor's bytes" (BGCOPY leaves it behind in a snapclone, and it
survives a delete or an invalidation by being merged like any Sp bit). A seed lets
the successor skip a copy; its bytes must not change before the seed is cleared.

The bulk rules here (link a snapshot, unlink an LD, detach a snapclone) are the
apply functions of the ``snap``, ``ldd``/``inv`` and ``cdet`` operations in ops.py:
pure map work over the LMAP arrays, called at run time and in log replay alike,
never directly. Per-segment changes go through ops.Ops.set_entry (cfw.py).
"""

from __future__ import annotations

import numpy as np

from ..mapping.lmap import DATA_MASK, SP, SS, STATE_MASK


# ---- walking a chain ------------------------------------------------------------------
def chain_of(ld) -> list:
    """Every LD of ``ld``'s sharing chain, oldest first."""
    while ld.pred is not None:
        ld = ld.pred
    out = []
    while ld is not None:
        out.append(ld)
        ld = ld.succ
    return out


def holder(ld, k: int) -> tuple[object, int]:
    """The LD whose entry holds ``ld``'s data for segment k, and that entry."""
    e = ld.l2.get(k)
    while e & SS:
        ld = ld.succ
        e = ld.l2.get(k)
    return ld, e


def resolve_range(ld, lo: int, hi: int) -> np.ndarray:
    """The entries that hold ``ld``'s data for segments lo..hi (the bulk ``holder``)."""
    res = ld.l2.entries(lo, hi)
    pending = (res & SS) != 0
    while pending.any():
        ld = ld.succ
        se = ld.l2.entries(lo, hi)
        res[pending] = se[pending]
        pending &= (se & SS) != 0
    return res


def seeded(ld, k: int) -> bool:
    """My successor's Sp stands over my own copy of k (a seed)."""
    s = ld.succ
    return s is not None and not ld.l2.get(k) & SS and bool(s.l2.get(k) & SP)


def readers_through(p, k: int) -> list:
    """``p`` and every older LD that reads segment k through it, newest first."""
    out = [p]
    q = p
    while q.pred is not None and q.l2.get(k) & SP and q.pred.l2.get(k) & SS:
        q = q.pred
        out.append(q)
    return out


def count_shared(ld) -> int:
    """Segments ``ld`` still reads through its successor."""
    return ld.l2.count(SS)


# ---- read-through caches (LogicalDisk._entry) --------------------------------------------
def reset_chain(ld) -> None:
    """The chain of ``ld`` changed shape or had its maps edited in bulk: drop the
    read caches of all its LDs and stop counting changes until one is built again."""
    for m in chain_of(ld):
        m.l2.gens = None
        m._rcache = None


def start_chain_cache(ld) -> list[int]:
    """Starts counting map changes for ``ld``'s whole chain (one list shared by all)."""
    g = [0] * len(ld.l2.lmaps)
    for m in chain_of(ld):
        m.l2.gens = g
        m._rcache = [None] * len(g)
    return g


# ---- snapshot (Fig. 9) -------------------------------------------------------------------
def link_snapshot(x, p) -> None:
    """Inserts new LD ``p`` as ``x``'s predecessor and sets the share bits."""
    q = x.pred
    p.pred, p.succ, x.pred = q, x, p
    if q is not None:
        q.succ = p
    per, n = x.l2.per, x.l2.nsegs
    for li, xl in enumerate(x.l2.lmaps):
        if xl is None:
            continue
        valid = min(per, n - li * per)
        pl = np.full(per, p.l2.fill, dtype=np.uint32)
        pl[:valid] = (xl[:valid] & SP) | SS
        p.l2.install(li, pl)
        xl[:valid] |= SP
    p.l2.fill = (x.l2.fill & SP) | SS
    x.l2.fill |= SP
    reset_chain(x)
    # LMAPs ``p`` installed above used the old fill for their tail: harmless, past the end.


# ---- delete anywhere ----------------------------------------------------------------------
def passes_down(xe: np.ndarray, pe: np.ndarray) -> np.ndarray:
    """Where X's predecessor (entries ``pe``) reads X's own entry (``xe``) through
    X: a delete of X hands it down instead of freeing it (space accounting counts
    the same, disk/usage.py). Not over a seed: there the predecessor has its own."""
    return ((xe & SP) != 0) & ((xe & SS) == 0) & ((pe & SS) != 0)


def unlink(x) -> np.ndarray:
    """Removes ``x`` from its chain: where the predecessor reads a segment that x
    owns, the allocation passes to it; pred and succ are linked and their bits
    merged so that both read the same bytes as before. Returns the entries nobody
    uses any more (to be freed)."""
    p, s = x.pred, x.succ
    freed = []
    for li, (lo, hi) in enumerate(x.l2.ranges()):
        if x.l2.lmaps[li] is None and (p is None or p.l2.lmaps[li] is None) \
                and (s is None or s.l2.lmaps[li] is None):
            continue   # all three stand for their fills: handled below
        xe = x.l2.entries(lo, hi)
        xs, xp = (xe & SS) != 0, (xe & SP) != 0
        alloc = (xe & STATE_MASK) != 0
        hand = np.zeros_like(alloc)
        if p is not None:
            pe = p.l2.entries(lo, hi)
            # p read x's own entry: it becomes p's own. Where p holds its own copy
            # (a seed: x.Sp kept over p's copy) nothing passes.
            take = passes_down(xe, pe)
            hand = alloc & take
            if hand.any():
                x.pool.space.fence.moved()   # reads begun before may have resolved them
            pe[take] = (pe[take] & SP) | (xe[take] & DATA_MASK)
            p.l2.put(lo, pe)
        freed.append(xe[alloc & ~hand])
        if s is not None:
            se = s.l2.entries(lo, hi)
            keep = xs & xp if p is not None else np.zeros_like(xs)
            s.l2.put(lo, np.where(keep, se | SP, se & ~np.uint32(SP)).astype(np.uint32))
    # the fills (absent LMAPs) follow the same rules
    xf = x.l2.fill
    if p is not None and xf & SP and not xf & SS and p.l2.fill & SS:
        p.l2.fill = (p.l2.fill & SP) | (xf & DATA_MASK)
    if s is not None:
        keep = p is not None and xf & SS and xf & SP
        s.l2.fill = (s.l2.fill | SP) if keep else (s.l2.fill & ~SP)
    _relink(x, p, s)
    return np.concatenate(freed) if freed else np.zeros(0, np.uint32)


# ---- revert: an LD reads like another LD of its chain (issue 13) ---------------------------
def revert(x, s, p) -> np.ndarray:
    """From now on ``x`` reads like ``s``; every other LD reads as before. Metadata
    only, for any ``s`` of the chain, newer or older:

    1. x's map leaves x's place: to ``p`` (a new LD that then keeps x's old bytes as a
       snapshot), or, with p None, unlinked like a deleted LD's.
    2. x takes s's place and s's map, so x reads s's bytes and the LDs next to it
       read through it as they read through s.
    3. s becomes x's predecessor reading everything through it (``link_snapshot``).

    x then stands next to s, maybe in the middle of the chain: chain order is the
    order of sharing, not of time. Returns the entries nobody uses any more."""
    if p is not None:
        _take_place(p, x)
        freed = np.zeros(0, np.uint32)
    else:
        freed = unlink(x)
        x.l2.clear()
    _take_place(x, s)
    link_snapshot(x, s)
    return freed


def _take_place(new, old) -> None:
    """``new`` (alone in no chain) takes ``old``'s map and place; ``old`` is left
    alone with ``new``'s map, whose LMAPs are absent."""
    new.l2, old.l2 = old.l2, new.l2
    new.pred, new.succ = old.pred, old.succ
    if old.pred is not None:
        old.pred.succ = new
    if old.succ is not None:
        old.succ.pred = new
    old.pred = old.succ = None
    old.l2.clear()
    reset_chain(new)
    reset_chain(old)


# ---- a snapclone leaves its tree (Fig. 14) ------------------------------------------------
def detach(c) -> None:
    """C shares nothing any more and Q (its predecessor) reads nothing through it
    that X (its successor) lacks: C leaves the chain. X.Sp keeps a bit only where
    C.Sp had it (cleared everywhere when C has no predecessor): the patent also
    keeps X.Sp when Q is a snapclone, which only preserves a seed; dropping it can
    cost Q a copy later, never data."""
    q, x = c.pred, c.succ
    for lo, hi in c.l2.ranges():
        ce = c.l2.entries(lo, hi)
        assert not np.any(ce & SS), "detach with shared segments"
        if x is not None:
            xe = x.l2.entries(lo, hi)
            keep = (ce & SP) != 0 if q is not None else np.zeros(hi - lo, dtype=bool)
            x.l2.put(lo, np.where(keep, xe, xe & ~np.uint32(SP)).astype(np.uint32))
        c.l2.put(lo, (ce & ~np.uint32(SP)).astype(np.uint32))
    # Every LMAP of both is present now; the fills follow the same rule, as a later
    # delete merges fills of LMAPs absent everywhere by the same bit rules.
    if x is not None and not (q is not None and c.l2.fill & SP):
        x.l2.fill &= ~SP
    c.l2.fill &= ~(SP | SS)
    _relink(c, q, x)


def _relink(x, p, s) -> None:
    if p is not None:
        p.succ = s
    if s is not None:
        s.pred = p
    x.pred = x.succ = None
    # Share bits in the fill of an LD with no successor (no predecessor) mean
    # nothing but would be followed once it grows: clear them.
    for ld in (p, s):
        if ld is not None:
            if ld.succ is None:
                ld.l2.fill &= ~SS
            if ld.pred is None:
                ld.l2.fill &= ~SP
    reset_chain(x)
    if p is not None or s is not None:
        reset_chain(p if p is not None else s)


# ---- what phase 2 of BGCOPY still owes a clone's predecessor --------------------------------
def pred_pending(c, lo: int, hi: int) -> np.ndarray:
    """Segments C's predecessor reads through C that C's successor no longer holds:
    they need a copy before C can leave."""
    q, x = c.pred, c.succ
    if q is None:
        return np.zeros(hi - lo, dtype=bool)
    need = ((q.l2.entries(lo, hi) & SS) != 0) & ((c.l2.entries(lo, hi) & SP) != 0)
    if x is not None:
        need &= (x.l2.entries(lo, hi) & SP) == 0
    return need
