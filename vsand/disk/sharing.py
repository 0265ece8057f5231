"""Sharing trees (DESIGN.md §7, patent Figs. 9-12): snapshot, copy on first write,
delete anywhere in a chain.

Chains run ``oldest snapshot <-> ... <-> newest snapshot <-> LUN``. Per segment an
LD either owns its entry (allocated or not) or has Ss set and reads through its
successor; Sp says the predecessor reads through me. The pairs always agree:
``X.Ss[k] == succ(X).Sp[k]``.

Copy on first write never overwrites shared data in place: the writer hands its
old allocation to the predecessor and continues in a new segment (a copy of the
old bytes when the write is partial). Old bytes therefore stay where the
committed maps say they are until the next commit moves them, which is what the
CFW ordering rule of DESIGN.md §9 asks for, without a synchronous commit.
"""

from __future__ import annotations

import numpy as np

from ..errors import IOFailure, NoSpace
from ..faults import crashpoint
from ..mapping.lmap import ALLOCATED, SP, SS, STATE_MASK, entry_rsd, entry_slot
from . import snapclone

DATA_MASK = 0xFFFFFFFF & ~(SP | SS)


# ---- snapshot -------------------------------------------------------------------------
def link_snapshot(x, p) -> None:
    """Inserts new LD ``p`` as ``x``'s predecessor and sets the share bits (Fig. 9)."""
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
def unlink(x) -> np.ndarray:
    """Removes ``x`` from its chain: where the predecessor shares a segment that x
    owns, the allocation passes to it; pred and succ are linked and their bits
    merged. Returns the entries nobody uses any more (to be freed). Pure map work."""
    p, s = x.pred, x.succ
    per, n = x.l2.per, x.l2.nsegs
    freed = []
    nl = len(x.l2.lmaps)
    for li in range(nl):
        lo, hi = li * per, min(n, (li + 1) * per)
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
            # (a snapclone's seed: x.Sp kept over p's copy) nothing passes.
            take = xp & ~xs & ((pe & SS) != 0)
            hand = alloc & take
            pe[take] = (pe[take] & SP) | (xe[take] & DATA_MASK)
            overwrite(p.l2, lo, pe)
        freed.append(xe[alloc & ~hand])
        if s is not None:
            se = s.l2.entries(lo, hi)
            keep = xs & xp if p is not None else np.zeros_like(xs)
            se = np.where(keep, se | SP, se & ~np.uint32(SP)).astype(np.uint32)
            overwrite(s.l2, lo, se)
    # the fills (absent LMAPs) follow the same rules
    xf = x.l2.fill
    if p is not None and xf & SP and not xf & SS and p.l2.fill & SS:
        p.l2.fill = (p.l2.fill & SP) | (xf & DATA_MASK)
    if s is not None:
        keep = p is not None and xf & SS and xf & SP
        s.l2.fill = (s.l2.fill | SP) if keep else (s.l2.fill & ~SP)
    if p is not None:
        p.succ = s
    if s is not None:
        s.pred = p
    x.pred = x.succ = None
    end_fills(p, s)
    reset_chain(x)
    if p is not None or s is not None:
        reset_chain(p if p is not None else s)
    return np.concatenate(freed) if freed else np.zeros(0, np.uint32)


# ---- read-through caches (LogicalDisk._entry) ----------------------------------------------
def chain_of(ld) -> list:
    """Every LD of ``ld``'s sharing chain, oldest first."""
    while ld.pred is not None:
        ld = ld.pred
    out = []
    while ld is not None:
        out.append(ld)
        ld = ld.succ
    return out


def reset_chain(ld) -> None:
    """The chain of ``ld`` changed shape or had its maps edited in bulk: drop the
    read caches of all its LDs and stop counting changes until one is built again."""
    for m in chain_of(ld):
        m.l2.gens = None
        m._rcache = None


def resolve_range(ld, lo: int, hi: int) -> np.ndarray:
    """The entries that hold ``ld``'s data for segments lo..hi: its own, or those of
    the first successor that owns each (the bulk form of LogicalDisk._holder)."""
    res = ld.l2.entries(lo, hi)
    pending = (res & SS) != 0
    while pending.any():
        ld = ld.succ
        se = ld.l2.entries(lo, hi)
        res[pending] = se[pending]
        pending &= (se & SS) != 0
    return res


def start_chain_cache(ld) -> list[int]:
    """Starts counting map changes for ``ld``'s whole chain (one list shared by all)."""
    g = [0] * len(ld.l2.lmaps)
    for m in chain_of(ld):
        m.l2.gens = g
        m._rcache = [None] * len(g)
    return g


def overwrite(l2, lo: int, arr: np.ndarray) -> None:
    """Stores entries in an LMAP made present if absent: the fill that stands for
    absent LMAPs may change next, and these entries must not change with it."""
    li = lo // l2.per
    l2.ensure(li)
    l2.lmaps[li][: len(arr)] = arr


def end_fills(*lds) -> None:
    """Share bits in the fill of an LD with no successor (no predecessor) mean
    nothing but would be followed once it grows: clear them."""
    for ld in lds:
        if ld is not None:
            if ld.succ is None:
                ld.l2.fill &= ~SS
            if ld.pred is None:
                ld.l2.fill &= ~SP


def put_entries(l2, lo: int, arr: np.ndarray) -> None:
    li = lo // l2.per
    if l2.lmaps[li] is None:
        if not np.any(arr != l2.fill):
            return
        l2.ensure(li)
    l2.lmaps[li][: len(arr)] = arr


# ---- copy on first write ------------------------------------------------------------------
def unshare(ld, k: int, whole: bool, trim: bool = False) -> None:
    """Makes segment k of ``ld`` exclusively ld's before it is written: afterwards
    ld.Ss[k] and ld.Sp[k] are clear and no other LD reads ld's entry for k.
    ``whole``: the coming write covers the segment, so no old bytes are copied;
    ``trim``: the segment is about to be unmapped, so ld needs no new space."""
    pool = ld.pool
    e = ld.l2.get(k)
    if e & SS:                                   # rule 1: get my own copy
        holder, he = ld._holder(k)
        mine = 0
        # Skip the copy only when nobody needs the old bytes through me: a whole
        # write or trim with no predecessor reading my entry.
        # A copying snapclone's own copy is what its reservation is for.
        own = snapclone.in_tree(ld)
        if he & ALLOCATED and (not (whole or trim) or e & SP):
            mine = _copy_into_new(ld, holder, he, own)
        elif he & ALLOCATED and whole and not trim:
            # Allocate before any bit changes: if the pool is full the write fails
            # with this LD still reading its old bytes through the successor.
            mine = pool.space.alloc_segment(ld, use_reserve=own)[0]
        if mine and own:
            pool.space.note_handover(ld)
        e = (e & SP) | mine
        ld.l2.set(k, e)
        succ = ld.succ
        succ.l2.set(k, succ.l2.get(k) & ~SP)
        pool.journal.touch(ld.id, k)
        pool.journal.touch(succ.id, k)
    elif ld.succ is not None and ld.succ.l2.get(k) & SP:
        # A seed (snapclone.py): my successor's Sp stands over my own copy, which is
        # about to change, so it no longer equals the successor's content.
        succ = ld.succ
        succ.l2.set(k, succ.l2.get(k) & ~SP)
        pool.journal.touch(succ.id, k)
        if not e & SP:    # with Sp set, rule 2 below moves my old bytes to my predecessor
            e = _redirect(ld, k, e, whole, trim)
            ld.l2.set(k, e)
            pool.journal.touch(ld.id, k)
    if e & SP:                                   # rule 2: give my predecessor its copy
        p = ld.pred
        pe = p.l2.get(k)
        if pe & SS:
            new = 0
            # The copy is paid from the reservation when p, or an older LD that
            # reads k through p, is a reserved snapshot: those are never invalidated.
            payer = reserved_reader(p, k)
            if e & ALLOCATED and not trim:
                reserve = payer is not None
                try:
                    if whole:   # the write fills it: no copy, no zeroing
                        new = pool.space.alloc_segment(ld, use_reserve=reserve)[0]
                    else:
                        new = _copy_into_new(ld, ld, e, reserve)
                except NoSpace:
                    _invalidate_for(ld, k)     # the snapshot loses, the write goes on
                    return
            p.l2.set(k, (pe & SP) | (e & DATA_MASK))
            if e & ALLOCATED and payer is not None:
                pool.space.note_handover(payer)
            e = new
            pool.journal.touch(p.id, k)
        else:             # a seed: p already holds its own copy of these bytes
            e = _redirect(ld, k, e & ~SP, whole, trim)
        ld.l2.set(k, e & ~SP)
        pool.journal.touch(ld.id, k)
        crashpoint("cfw.after_handover")
        # Fig. 13f: a snapclone's predecessor gets its copy now, so the snapclone can
        # leave the tree without a final pass (the "eager" mode).
        if snapclone.in_tree(p) and p.pred is not None and p.l2.get(k) & SP \
                and p.pred.l2.get(k) & SS and snapclone.mode(pool) == "eager":
            snapclone.give_pred_copy(p, k)


def _redirect(ld, k: int, e: int, whole: bool, trim: bool) -> int:
    """``ld``'s entry for k once the seed over it is cleared: its bytes move to a
    new segment (a copy unless the write covers it), because until the next commit
    the committed seed still vouches that they equal the other LD's, and a crash
    must find them unchanged. Short of space, the cleared seed is committed first
    and the write goes in place."""
    if not e & ALLOCATED or trim:
        return e                      # nothing to overwrite: trim frees after commit
    pool = ld.pool
    try:
        new = pool.space.alloc_segment(ld)[0] if whole else _copy_into_new(ld, ld, e)
    except NoSpace:
        crashpoint("cfw.before_seed_commit")
        pool.flush()
        return e
    pool.space.free_segment(ld, e)
    return (e & (SP | SS)) | new


def reserved_reader(p, k: int):
    """The nearest reserved snapshot among ``p`` and the older LDs that read segment
    k through it, or None. An older snapclone still copying does not pay: its
    reservation is for its own copy of k, which it still has to make."""
    q = p
    while q is not None:
        if q.attrs.get("space") == "reserve" and (q is p or not snapclone.in_tree(q)):
            return q
        q = q.pred if q.pred is not None and q.pred.l2.get(k) & SS else None
    return None


def _copy_into_new(dst, src, se: int, use_reserve: bool = False) -> int:
    """A new segment for ``dst`` holding the bytes of ``src``'s entry ``se``."""
    pool = dst.pool
    data = pool.rio.read(src.raid, pool.space.members(src.table, entry_rsd(se)), entry_slot(se),
                         0, dst.seg)
    ne, _fresh = pool.space.alloc_segment(dst, use_reserve=use_reserve)
    members = pool.space.members(dst.table, entry_rsd(ne))
    # No write intent: a whole segment is a whole RAID5 row (or a mirrored pair), and
    # until the next commit no committed map refers to this new segment; a write torn
    # by a crash leaves a free segment, and whoever gets it next writes or zeroes the
    # whole row first, which makes its parity whole again.
    pool.rio.write(dst.raid, members, entry_slot(ne), 0, data)
    crashpoint("cfw.after_copy")
    return ne


def invalidate_readers(p, k: int) -> None:
    """``p`` (and every older LD that reads segment k through it) could not get its
    copy of segment k: they are invalidated and p owns nothing for k."""
    victims = []
    q = p
    while q is not None and (q is p or q.l2.get(k) & SS):
        if q is not p and snapclone.in_tree(q):
            # A copying snapclone is never invalidated: it makes its own copy of k
            # now, from its reservation (made for exactly that), and older LDs read
            # k through it from then on.
            holder, he = q._holder(k)
            new = _copy_into_new(q, holder, he, True) if he & ALLOCATED else 0
            q.l2.set(k, (q.l2.get(k) & SP) | new)
            if new:
                q.pool.space.note_handover(q)
            q.pool.journal.touch(q.id, k)
            break
        victims.append(q)
        q = q.pred
    for v in victims:
        if not v.attrs.get("invalid"):
            v.pool.set_attrs(v.name, invalid=True, _commit=False)
    p.l2.set(k, p.l2.get(k) & SP)


def copy_for_pred(c, q, k: int, ce: int) -> int | None:
    """A new segment for ``q`` (c's predecessor) holding c's bytes for k, paid like
    any snapshot copy; None when there is no space and q was invalidated."""
    payer = reserved_reader(q, k)
    try:
        new = _copy_into_new(q, c, ce, payer is not None)
    except NoSpace:
        invalidate_readers(q, k)
        return None
    if payer is not None:
        c.pool.space.note_handover(payer)
    return new


def _invalidate_for(ld, k: int) -> None:
    """No space for a copy: the predecessor (and every older LD that reads segment k
    through it) is invalidated; ld keeps its data and stops sharing it."""
    p = ld.pred
    invalidate_readers(p, k)
    ld.l2.set(k, ld.l2.get(k) & ~SP)
    ld.pool.journal.touch(p.id, k)
    ld.pool.journal.touch(ld.id, k)
    # The write that follows goes in place over the bytes the committed maps still
    # give p: the invalidation must be durable first (DESIGN.md §9, CFW ordering).
    crashpoint("cfw.before_invalidate_commit")
    ld.pool.flush()


def check_valid(ld) -> None:
    if ld.attrs.get("invalid"):
        raise IOFailure(f"{ld.name} was invalidated (its snapshot space ran out); delete it")
