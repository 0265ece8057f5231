"""What failed drives cost: the allocated segments that no redundancy covers."""

from __future__ import annotations

import numpy as np

from ..mapping.lmap import owned, rsds
from ..mapping.rsd import member_drives


def lost_rstores(pool, failed: set[int]) -> dict[tuple[int, str], np.ndarray]:
    """Per RSD table, the live RStores that lost data with the drives in ``failed``:
    RAID0 with any member there, RAID5 with two, RAID1 with both copies of a column."""
    out = {}
    f = np.fromiter(failed, dtype=np.int64, count=len(failed))
    if not len(f):
        return out              # every start asks: no copy of the tables then
    for key, t in pool.space.tables.items():
        live, rows = t.live_rows()
        if not len(live):
            continue
        drives = member_drives(rows)
        bad = np.isin(drives, f)
        if t.raid == 1:
            uniq = np.unique(drives)
            partner = np.array([pool.allocator.partner(d) for d in uniq.tolist()], dtype=np.int64)
            bad &= np.isin(partner[np.searchsorted(uniq, drives)], f)
            hit = bad.any(axis=1)
        else:
            hit = bad.sum(axis=1) > (1 if t.raid == 5 else 0)
        if hit.any():
            out[key] = live[hit]
    return out


def unreadable(pool, failed: set[int]) -> dict[str, int]:
    """LD name -> allocated segments it owns in RStores lost to ``failed``."""
    lost = lost_rstores(pool, failed)
    out = {}
    for ld in pool.catalog.by_id.values():
        gone = lost.get((ld.raid, ld.ldad))
        if gone is None:
            continue
        _, es = ld.l2.allocated()
        n = int(np.count_nonzero(np.isin(rsds(es[owned(es)]), gone)))
        if n:
            out[ld.name] = n
    return out
