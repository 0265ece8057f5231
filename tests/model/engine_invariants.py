"""Structural invariants of an open pool, for the model tests (DESIGN.md §12).

``check_invariants(pool)`` returns a list of problems ([] = consistent) about:

- LMAP entries: every allocated entry refers to a live RSD of its LD's table; no
  (RSD table, RSD index, slot) is referenced twice; entries past an LD's end are
  clear; an entry with Ss set owns no data.
- RSD slots: every slot of a live RStore is exactly one of referenced / free /
  freed-but-uncommitted (journal), never two; "fresh" slots are free slots.
- PSEGs: the allocator's free maps mark used exactly the PSEGs of live RStores
  (RAID1 partners included), of the current checkpoint copies and of RStores
  dropped but not yet committed (``allocator.pending``), each owned once; every
  drive's ``free`` counter agrees with its map. No leak, no double owner.
- Placement: the PSEGs of an RStore sit on distinct drives.

It works in bulk with numpy, so it is cheap enough to run after every step of a
stateful test on a small pool. ``assert_invariants`` raises with the list.
"""

from __future__ import annotations

import numpy as np

from vsand.mapping.lmap import ALLOCATED, SS, STATE_MASK


def _live_mask(t) -> np.ndarray:
    live = np.zeros(t.count, dtype=bool)
    if t.count:
        live[t.live_indices()] = True
    return live


def check_invariants(pool) -> list[str]:
    out: list[str] = []
    tables = pool.space.tables
    u = pool.units

    # ---- LMAP entries -> RSD slots ---------------------------------------------------
    refs: dict[tuple[int, str], list[np.ndarray]] = {}
    for ld in pool.lds_by_id.values():
        if pool.lds.get(ld.name) is not ld:
            out.append(f"LD {ld.name}: name index disagrees with id index")
        if ld.l2.nsegs * u.segment != ld.size:
            out.append(f"LD {ld.name}: map covers {ld.l2.nsegs} segments, size is {ld.size}")
        for li, lm in ld.l2.items():
            tail = lm[max(0, ld.l2.nsegs - li * ld.l2.per):]
            if np.any(tail):
                out.append(f"LD {ld.name} LMAP {li}: entries set past the end of the LD")
            if np.any(((lm & SS) != 0) & ((lm & STATE_MASK) != 0)):
                out.append(f"LD {ld.name} LMAP {li}: an entry is both Ss and owned")
        ks, es = ld.l2.allocated()
        state = es & STATE_MASK
        if np.any(state != ALLOCATED):
            out.append(f"LD {ld.name}: {int(np.count_nonzero(state != ALLOCATED))} entries with an unknown state")
        key = (ld.raid, ld.ldad)
        t = tables.get(key)
        if t is None:
            if len(es):
                out.append(f"LD {ld.name}: allocated entries but no RSD table {key}")
            continue
        if ld.table is not t:
            out.append(f"LD {ld.name}: table object is not the pool's table {key}")
        idx = ((es >> 3) & 0x1FFFFFF).astype(np.int64)
        slot = (es & 7).astype(np.int64)
        live = _live_mask(t)
        dead = (idx >= t.count) | ~live[np.minimum(idx, max(t.count - 1, 0))] if t.count else np.ones(len(idx), bool)
        for k, i in zip(ks[dead][:10].tolist(), idx[dead][:10].tolist()):
            out.append(f"LD {ld.name} segment {k}: refers to dead/missing RSD {i}")
        refs.setdefault(key, []).append(idx * 8 + slot)

    # ---- RSD slots: referenced / free / pending partition ----------------------------
    pending_slots: dict[tuple[int, str], list[int]] = {}
    for t, i, s in pool.journal.slots:
        pending_slots.setdefault((t.raid, t.ldad), []).append(i * 8 + s)
    for key, t in tables.items():
        r = np.concatenate(refs[key]) if key in refs else np.zeros(0, np.int64)
        uniq, counts = np.unique(r, return_counts=True)
        for x in uniq[counts > 1][:10].tolist():
            out.append(f"RSD RAID{key[0]}/{key[1]}#{x >> 3} slot {x & 7}: referenced {int(counts[uniq == x][0])} times")
        p = np.asarray(pending_slots.get(key, []), dtype=np.int64)
        pu, pc = np.unique(p, return_counts=True)
        for x in pu[pc > 1][:10].tolist():
            out.append(f"RSD RAID{key[0]}/{key[1]}#{x >> 3} slot {x & 7}: freed twice in one transaction")
        live = _live_mask(t)
        nrows = t.count
        refmask = np.zeros(nrows, dtype=np.int64)
        if len(uniq):
            ok = (uniq >> 3) < nrows
            np.bitwise_or.at(refmask, (uniq[ok] >> 3), 1 << (uniq[ok] & 7))
        pendmask = np.zeros(nrows, dtype=np.int64)
        if len(pu):
            ok = (pu >> 3) < nrows
            if not ok.all():
                out.append(f"RSD RAID{key[0]}/{key[1]}: a pending slot is beyond the table")
            np.bitwise_or.at(pendmask, (pu[ok] >> 3), 1 << (pu[ok] & 7))
        for i in range(nrows):
            free = t.free_slots.get(i, 0)
            if not live[i]:
                if free:
                    out.append(f"RSD RAID{key[0]}/{key[1]}#{i}: dead but has free slots {free:#x}")
                if i in t.fresh:
                    out.append(f"RSD RAID{key[0]}/{key[1]}#{i}: dead but has fresh slots")
                if pendmask[i]:
                    out.append(f"RSD RAID{key[0]}/{key[1]}#{i}: dead but has uncommitted freed slots")
                continue
            rm, pm = int(refmask[i]), int(pendmask[i])
            if rm & free:
                out.append(f"RSD RAID{key[0]}/{key[1]}#{i}: referenced slots {rm & free:#x} are on the free list")
            if rm & pm:
                out.append(f"RSD RAID{key[0]}/{key[1]}#{i}: referenced slots {rm & pm:#x} were freed")
            if pm & free:
                out.append(f"RSD RAID{key[0]}/{key[1]}#{i}: slots {pm & free:#x} freed twice (free and pending)")
            if (rm | pm | free) != 0xFF:
                out.append(f"RSD RAID{key[0]}/{key[1]}#{i}: slots {~(rm | pm | free) & 0xFF:#x} are lost "
                           f"(neither referenced, free nor pending)")
            fresh = t.fresh.get(i, 0)
            if fresh & ~free:
                out.append(f"RSD RAID{key[0]}/{key[1]}#{i}: fresh slots {fresh & ~free:#x} are not free")
        for i in t.free_ids:
            if i < nrows and live[i]:
                out.append(f"RSD RAID{key[0]}/{key[1]}: live index {i} is on the free-index list")
        for tt, i in pool.journal.rsd_ids:
            if tt is t and i < nrows and live[i]:
                out.append(f"RSD RAID{key[0]}/{key[1]}: live index {i} waits to be released")
        if len(set(t.free_ids)) != len(t.free_ids):
            out.append(f"RSD RAID{key[0]}/{key[1]}: duplicate entries on the free-index list")

    # ---- PSEG ownership vs. allocator free maps ----------------------------------------
    alloc = pool.allocator
    owner = {i: np.zeros(ds.npsegs, dtype=np.int32) for i, ds in alloc.drives.items()}

    def own(d: int, g: int, what: str) -> None:
        if d not in owner or not 0 <= g < len(owner[d]):
            out.append(f"{what}: PSEG {d}:{g} out of range")
        else:
            owner[d][g] += 1

    for key, t in tables.items():
        for i in t.live_indices().tolist():
            phys = pool.space.physical(t.raid, t.members(i))
            if len({d for d, _ in phys}) != len(phys):
                out.append(f"RSD RAID{key[0]}/{key[1]}#{i}: two members on one drive")
            for d, g in phys:
                own(d, g, f"RSD RAID{key[0]}/{key[1]}#{i}")
    if pool.ckpt:
        for d, psegs in pool.ckpt["copies"]:
            for g in psegs:
                own(d, g, "checkpoint copy")
    for d, g in alloc.pending:
        own(d, g, "pending free")
    for d, o in owner.items():
        ds = alloc.drives[d]
        for g in np.flatnonzero(o > 1)[:10].tolist():
            out.append(f"drive {d} PSEG {g}: {int(o[g])} owners")
        diff = ds.used != (o > 0)
        if np.any(diff):
            leaked = np.flatnonzero(ds.used & (o == 0))
            lost = np.flatnonzero(~ds.used & (o > 0))
            if len(leaked):
                out.append(f"drive {d}: {len(leaked)} PSEGs used in the free map but owned by nothing "
                           f"(leak), e.g. {leaked[:5].tolist()}")
            if len(lost):
                out.append(f"drive {d}: {len(lost)} owned PSEGs are free in the free map, e.g. {lost[:5].tolist()}")
        if ds.free != ds.npsegs - int(np.count_nonzero(ds.used)):
            out.append(f"drive {d}: free counter {ds.free} != {ds.npsegs - int(np.count_nonzero(ds.used))}")
    return out


def assert_invariants(pool) -> None:
    problems = check_invariants(pool)
    assert not problems, "pool invariants violated:\n  " + "\n  ".join(problems)
