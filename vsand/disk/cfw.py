"""Copy on first write (DESIGN.md §7, patent Figs. 10-13): before an LD changes a
segment it shares, it gets its own copy and its predecessor keeps the old bytes.

Shared data is never overwritten in place: the writer hands its old allocation to
its predecessor and continues in a new segment (a copy of the old bytes when the
write is partial). Old bytes therefore stay where the committed maps say they are
until the next commit moves them, which is what the CFW ordering rule of
DESIGN.md §9 asks for without a synchronous commit. Every map change goes through
ops.Ops; the share-bit meaning is sharing.py's.

When a copy for a predecessor finds no space, that predecessor (and every older LD
reading the segment through it) is invalidated (ops ``inv``): it leaves the chain
like a delete, so the write goes on and a LUN write never fails because of a
snapshot. ``eager`` is the snapclone policy (snapclone.py): a copy into a copying
clone also gives the clone's predecessor its copy (Fig. 13f).
"""

from __future__ import annotations

from ..errors import NoSpace
from ..faults import crashpoint
from ..mapping.lmap import ALLOCATED, DATA_MASK, SHARED, SP, SS, entry_rsd, entry_slot
from . import sharing


def unshare(ld, k: int, whole: bool, trim: bool = False, eager: bool = False) -> None:
    """Makes segment k of ``ld`` exclusively ld's before it is written: afterwards
    ld.Ss[k] and ld.Sp[k] are clear and no other LD reads ld's entry for k.
    ``whole``: the coming write covers the segment, so no old bytes are copied;
    ``trim``: the segment is about to be unmapped, so ld needs no new space."""
    pool = ld.pool
    ops = pool.ops
    e = ld.l2.get(k)
    if e & SS:                                   # rule 1: get my own copy
        holder, he = sharing.holder(ld, k)
        mine = 0
        # A copying snapclone's own copy is what its reservation is for.
        own = ld.role.copying
        # Skip the copy only when nobody needs the old bytes through me: a whole
        # write or trim with no predecessor reading my entry.
        if he & ALLOCATED and (not (whole or trim) or e & SP):
            mine = copy_into_new(ld, holder, he, own)
        elif he & ALLOCATED and whole and not trim:
            # Allocate before any bit changes: if the pool is full the write fails
            # with this LD still reading its old bytes through the successor.
            mine = pool.space.alloc_segment(ld, use_reserve=own)[0]
        if mine and own:
            pool.space.note_handover(ld)
        e = (e & SP) | mine
        ops.set_entry(ld, k, e)
        succ = ld.succ
        ops.set_entry(succ, k, succ.l2.get(k) & ~SP)
        if he & ALLOCATED:
            # Until the next commit the committed maps still have me reading the
            # holder's bytes: its next write must not land on them in place (redirect).
            pool.space.hand_over(ld.table, he)
    elif sharing.seeded(ld, k):
        # My successor's Sp stands over my own copy, which is about to change, so it
        # no longer equals the successor's content.
        succ = ld.succ
        ops.set_entry(succ, k, succ.l2.get(k) & ~SP)
        if not e & SP:    # with Sp set, rule 2 below moves my old bytes to my predecessor
            ops.set_entry(ld, k, redirect(ld, k, e, whole, trim))
            e = ld.l2.get(k)
    if not e & SP:
        return
    p = ld.pred                                  # rule 2: give my predecessor its copy
    if p.l2.get(k) & SS:
        e = _hand_over(ld, p, k, e, whole, trim)
    if e & SP:        # a seed: p holds its own copy of these bytes already
        ops.set_entry(ld, k, e & ~SP)
        e = redirect(ld, k, e & ~SP, whole, trim)
    ops.set_entry(ld, k, e)
    crashpoint("cfw.after_handover")
    p = ld.pred
    # Fig. 13f: a snapclone's predecessor gets its copy now, so the snapclone can
    # leave the tree without a final pass (the "eager" mode).
    if eager and p is not None and p.role.copying and p.pred is not None \
            and p.l2.get(k) & SP and p.pred.l2.get(k) & SS:
        give_pred_copy(p, k)


def _hand_over(ld, p, k: int, e: int, whole: bool, trim: bool) -> int:
    """p reads segment k through ld: p takes ld's current allocation and ld goes on
    in a new segment (a copy for a partial write). Returns ld's entry for k, Sp
    still set only where a seed is left (p was invalidated instead)."""
    pool = ld.pool
    ops = pool.ops
    new = 0
    # The copy is paid from a reservation when p, or an older LD that reads k
    # through p, is reserved: those are never invalidated.
    payer = reserved_reader(p, k)
    if e & ALLOCATED and not trim:
        try:
            if whole:   # the write fills it: no copy, no zeroing
                new = pool.space.alloc_segment(ld, use_reserve=payer is not None)[0]
            else:
                new = copy_into_new(ld, ld, e, payer is not None)
        except NoSpace:
            invalidate_readers(p, k)           # the snapshot loses, the write goes on
            return ld.l2.get(k)
    ops.set_entry(p, k, (p.l2.get(k) & SP) | (e & DATA_MASK))
    if e & ALLOCATED:
        pool.space.hand_over(ld.table, e)
    if e & ALLOCATED and payer is not None:
        pool.space.note_handover(payer)
    return new


def redirect(ld, k: int, e: int, whole: bool, trim: bool = False) -> int:
    """``ld``'s entry for k, before a write, when the committed maps still give its
    bytes to another LD: a seed over it that the caller has cleared in memory (the
    committed seed vouches they equal the other LD's), or an allocation handed to
    ld since the last commit (the committed maps still give it to the LD that
    handed it over). A crash must find them unchanged, so they move to a new segment
    (a copy unless the write covers it). Short of space, the change is committed
    first and the write goes in place."""
    if not e & ALLOCATED or trim:
        return e                      # nothing to overwrite: trim frees after commit
    pool = ld.pool
    try:
        new = pool.space.alloc_segment(ld)[0] if whole else copy_into_new(ld, ld, e)
    except NoSpace:
        crashpoint("cfw.before_seed_commit")
        pool.flush()
        return e
    pool.space.free_segment(ld, e)
    return (e & SHARED) | new


def reserved_reader(p, k: int):
    """The nearest reserved LD among ``p`` and the older LDs that read segment k
    through it, or None. An older snapclone still copying does not pay: its
    reservation is for its own copy of k, which it still has to make."""
    for q in sharing.readers_through(p, k):
        if q.role.reserved and (q is p or not q.role.copying):
            return q
    return None


def copy_into_new(dst, src, se: int, use_reserve: bool = False) -> int:
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
    """``p`` (and every older LD that reads segment k through it) cannot get its copy
    of segment k: they are invalidated, durably, before the caller overwrites k."""
    pool = p.pool
    victims = []
    for q in sharing.readers_through(p, k):
        if q is not p and q.role.copying:
            # A copying snapclone is never invalidated: it makes its own copy of k
            # now, from its reservation (made for exactly that), and older LDs read
            # k through it from then on.
            holder, he = sharing.holder(q, k)
            new = copy_into_new(q, holder, he, True) if he & ALLOCATED else 0
            pool.ops.set_entry(q, k, (q.l2.get(k) & SP) | new)
            if new:
                pool.space.note_handover(q)
            break
        victims.append(q)
    crashpoint("cfw.before_invalidate_commit")
    pool.invalidate(victims, f"no space for its copy of segment {k}")


def give_pred_copy(c, k: int) -> bool:
    """C's predecessor Q reads segment k through C: give Q its own copy of C's data
    for k (Fig. 13f) and end that pair's sharing. Returns True if bytes were copied.
    Q pays like any snapshot: from its reservation, or it is invalidated."""
    ops = c.pool.ops
    q = c.pred
    qe = q.l2.get(k)
    ce = c.l2.get(k)
    assert qe & SS and not ce & SS
    new = 0
    if ce & ALLOCATED:
        payer = reserved_reader(q, k)
        try:
            new = copy_into_new(q, c, ce, payer is not None)
        except NoSpace:
            invalidate_readers(q, k)          # Q leaves the chain: nothing is owed
            return False
        if payer is not None:
            c.pool.space.note_handover(payer)
    ops.set_entry(q, k, (qe & SP) | new)
    ops.set_entry(c, k, ce & ~SP)
    return bool(new)
