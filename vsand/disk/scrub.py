"""Scrub (DESIGN.md §5): reads every allocated stripe of every RAID1/RAID5 RStore,
checks parity and mirror copies, and repairs what disagrees or cannot be read
(RStoreIO.scrub says how). Read errors count against their drive like any other
(failure detection), so a scrub can fail a drive, whose data the rebuild then
restores.

A step runs on the event loop, after the writes in flight are finished: nothing
writes a stripe while it is checked, so a stripe in the middle of a write is never
mistaken for a damaged one (a write torn by a crash was resynced at start-up). The
cursor lives in memory: a scrub cut short by a restart starts again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("vsand.scrub")


@dataclass
class Cursor:
    table: int = 0          # index into the sorted redundant tables
    idx: int = 0            # next RSD index in that table
    total: int = 0          # allocated stripes when the scrub began
    checked: int = 0        # stripes checked so far
    repaired: list = field(default_factory=list)   # what was repaired, one line each


def _tables(pool) -> list:
    return [pool.space.tables[k] for k in sorted(pool.space.tables) if k[0] in (1, 5)]


def used_slots(t, idx: int, n: int) -> list[int]:
    free = t.free_slots.get(idx, 0)
    return [s for s in range(n) if not free & (1 << s)]


def stripes(pool) -> int:
    """Allocated stripes a whole scrub checks: every slot of every live RStore but
    the free ones, counted from the free-slot masks, not RStore by RStore."""
    n = pool.units.rstore_segments
    return sum(len(t.live_indices()) * n - sum(bin(m).count("1") for m in t.free_slots.values())
               for t in _tables(pool))


def step(pool, cur: Cursor, budget: int) -> dict:
    """Checks about ``budget`` stripes from ``cur`` on, on the calling thread;
    ``done`` when every RStore was visited."""
    pool.stripes.drain()
    tables = _tables(pool)
    n = 0
    while cur.table < len(tables) and n < budget:
        t = tables[cur.table]
        live = t.live_indices()             # once per table and step, in bulk
        live = live[live >= cur.idx].tolist()
        if not live:
            cur.table, cur.idx = cur.table + 1, 0
            continue
        for idx in live:
            if n >= budget:
                break
            cur.idx = idx + 1
            members = pool.space.members(t, idx)
            for slot in used_slots(t, idx, pool.units.rstore_segments):
                for what in pool.rio.scrub(t.raid, members, slot):
                    line = f"RAID{t.raid} RStore {idx} stripe {slot}: {what}"
                    log.warning("scrub: %s", line)
                    cur.repaired.append(line)
                n += 1
    cur.checked += n
    done = cur.table >= len(tables)
    if done:
        log.info("scrub done: %d stripes checked, %d repaired", cur.checked, len(cur.repaired))
    return {"checked": n, "bytes": n * pool.units.segment, "done": done}
