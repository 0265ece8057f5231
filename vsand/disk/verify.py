"""The consistency rules of an open pool, one line per problem ([] = consistent):
labels and superblock copies, checkpoint copies, RSD placement and PSEG ownership
against the free maps, LMAP references (one owner per slot), share-bit
invariants, free slots, and (``parity``) redundancy against data. Used by the
offline checker (check.py) and by a start-up after needs_check (pool.py).
"""

from __future__ import annotations

import numpy as np

from ..errors import VsanError
from ..mapping.lmap import SP, SS, entry_rsd, entry_slot, key_rsd, key_slot, rsds, slot_keys, unknown_state
from ..meta import format as fmt
from ..meta.store import MetaStore
from .recovery import used_slots


def check_pool(pool, parity: bool = False) -> list[str]:
    out: list[str] = []
    u = pool.units
    # -- superblock copies and checkpoint copies ------------------------------------
    for i in pool.quorum_ids:
        d = pool.drives[i]
        if d.failed:
            continue
        if not any(fmt.unpack_superblock(d.pread(off, fmt.SB_SLOT_SIZE)) for off in fmt.SB_SLOT_OFF):
            out.append(f"drive {i}: no valid superblock copy")
    if pool.ckpt:
        for d, psegs in pool.ckpt["copies"]:
            if pool.drives[d].failed:
                continue
            try:
                n = pool.ckpt["len"]
                fmt.read_checkpoint(MetaStore.blob_reader(pool.drives[d], [u.quorum + g * u.pseg
                                                                           for g in psegs], u.pseg, n),
                                    n, pool.ckpt["seq"])
            except VsanError as e:
                out.append(f"checkpoint copy on drive {d}: {e.message}")
    # -- RSDs: placement rules, PSEG ownership --------------------------------------
    owner = {i: np.zeros(ds.npsegs, dtype=np.int32) for i, ds in pool.allocator.drives.items()}
    rss_of = {}
    for ldad, groups in pool.allocator.rss.items():
        for gi, g in enumerate(groups):
            for d in g:
                rss_of[d] = (ldad, gi)
    if pool.ckpt:
        for d, psegs in pool.ckpt["copies"]:
            for g in psegs:
                owner[d][g] += 1
    for d, g in pool.allocator.pending:      # freed, parked until the next commit
        owner[d][g] += 1
    for (raid, ldad), t in pool.space.tables.items():
        for idx in t.live_indices().tolist():
            stored = t.members(idx)
            phys = pool.space.physical(raid, stored)
            ds = [d for d, _ in phys]
            if len(set(ds)) != len(ds):
                out.append(f"RSD RAID{raid}/{ldad}#{idx}: two members on one drive")
            groups = {rss_of.get(d) for d in ds}
            if len(groups) != 1 or next(iter(groups)) is None or next(iter(groups))[0] != ldad:
                out.append(f"RSD RAID{raid}/{ldad}#{idx}: members outside one RSS of LDAD {ldad}")
            for d, g in phys:
                if d not in owner or g >= len(owner[d]):
                    out.append(f"RSD RAID{raid}/{ldad}#{idx}: PSEG {d}:{g} out of range")
                else:
                    owner[d][g] += 1
    for d, own in owner.items():
        for g in np.flatnonzero(own > 1).tolist():
            out.append(f"drive {d} PSEG {g}: owned {int(own[g])} times")
        used = pool.allocator.drives[d].used
        if not np.array_equal(used, own > 0):
            n = int(np.count_nonzero(used != (own > 0)))
            out.append(f"drive {d}: free map disagrees with RSDs on {n} PSEGs")
    # -- maps: references, single owner, share bits ---------------------------------
    refs: dict[tuple[int, str], list[np.ndarray]] = {}
    for ld in pool.catalog.by_id.values():
        t = ld.table
        ks, es = ld.l2.allocated()
        bad_state = es[unknown_state(es)]
        if len(bad_state):
            out.append(f"LD {ld.name}: {len(bad_state)} entries with an unknown state")
        keys = slot_keys(es)
        idx = rsds(es)
        live = np.zeros(max(t.count, 1), dtype=bool)
        live[t.live_indices()] = True
        dead = (idx >= t.count) | ~live[np.minimum(idx, max(t.count - 1, 0))]
        for k in ks[dead][:10].tolist():
            out.append(f"LD {ld.name} segment {k}: refers to a missing RSD")
        refs.setdefault((ld.raid, ld.ldad), []).append(keys)
        per = ld.l2.per
        for li in range(len(ld.l2.lmaps)):
            lo, hi = li * per, min((li + 1) * per, ld.l2.nsegs)
            mine = ld.l2.entries(lo, hi)
            has_ss = (mine & SS) != 0
            if np.any(has_ss & ((mine & ~np.uint32(SP | SS)) != 0)):
                out.append(f"LD {ld.name} LMAP {li}: a segment is both shared with the successor and owned")
            if ld.succ is None and np.any(has_ss):
                out.append(f"LD {ld.name} LMAP {li}: Ss set without a successor")
            if ld.pred is None and np.any(mine & SP):
                out.append(f"LD {ld.name} LMAP {li}: Sp set without a predecessor")
            if ld.succ is not None:
                other = ld.succ.l2.entries(lo, hi)
                # Ss needs the successor's Sp; Sp alone over an owned entry is a
                # snapclone's seed (snapclone.py)
                if np.any(has_ss & ((other & SP) == 0)):
                    out.append(f"LD {ld.name} LMAP {li}: Ss set where the successor's Sp is clear")
        if (ld.succ is not None) != (ld.succ is not None and ld.succ.pred is ld):
            out.append(f"LD {ld.name}: successor link is not mutual")
        if ld.l2.nsegs * u.segment != ld.size:
            out.append(f"LD {ld.name}: map covers {ld.l2.nsegs} segments, size is {ld.size}")
    for key, parts in refs.items():
        allrefs = np.concatenate(parts)
        uniq, counts = np.unique(allrefs, return_counts=True)
        for r in uniq[counts > 1][:10].tolist():
            out.append(f"RSD RAID{key[0]}/{key[1]}#{key_rsd(r)} slot {key_slot(r)}: owned by more than one entry")
    # -- free slots agree with references ------------------------------------------
    for key, m in used_slots(pool).items():
        t = pool.space.tables[key]
        for idx in t.live_indices().tolist():
            free = t.free_slots.get(idx, 0)
            if free & int(m[idx]):
                out.append(f"RSD RAID{key[0]}/{key[1]}#{idx}: a used slot is on the free list")
        counted = sum(m.bit_count() for m in t.free_slots.values())
        if counted != t.nfree:
            out.append(f"RSD RAID{key[0]}/{key[1]}: {counted} free slots, counted as {t.nfree}")
    # -- optional: redundancy agrees with data ---------------------------------------
    if parity:
        for ld in pool.catalog.by_id.values():
            ks, es = ld.l2.allocated()
            for k, e in zip(ks.tolist(), es.tolist()):
                members = pool.space.members(ld.table, entry_rsd(e))
                if any(pool.drives[d].failed for d, _ in members):
                    continue      # degraded: nothing to compare against (reported above)
                try:
                    if not pool.rio.consistent(ld.raid, members, entry_slot(e)):
                        out.append(f"LD {ld.name} segment {k}: redundancy disagrees with data")
                except VsanError as ex:
                    out.append(f"LD {ld.name} segment {k}: {ex.message}")
    return out
