"""Space accounting (vsand/disk/usage.py) checked against the engine, for the model
tests and the unit tests of the accounting:

- ``usage_problems(pool)``: each LD's referenced / exclusive equal a segment-by-
  segment reference (the holder of each segment; the unlink rule), shared =
  referenced - exclusive >= 0, allocated is what the LD's map owns, and the LDs'
  allocated sum to the pool's (counted from the RSD tables' free slots).
- ``backing_problems(pool)``: the free PSEGs of each LDAD cover what its
  reservations need beyond the free slots of their RSD tables (slots a commit is
  about to free counted as free): a reserved snapshot or a copying snapclone
  always finds its space, whatever other LDs allocated meanwhile.
- ``delete_measured(pool, name)``: deletes ``name`` and returns (its exclusive
  segments before, the segments the pool's allocation went down by): equal
  when the accounting is right.

The reference loops per segment: for the small LDs of tests only.
"""

from __future__ import annotations

from vsand.disk import sharing, usage
from vsand.mapping.lmap import ALLOCATED, SP, SS
from vsand.physical.allocator import RAID_WIDTH


def reference(ld) -> tuple[int, int]:
    """(referenced, exclusive) segments of ``ld``, one segment at a time."""
    ref = excl = 0
    for k in range(ld.l2.nsegs):
        _, e = sharing.holder(ld, k)
        ref += bool(e & ALLOCATED)
        mine = ld.l2.get(k)
        if mine & ALLOCATED:
            p = ld.pred
            handed = p is not None and mine & SP and not mine & SS and p.l2.get(k) & SS
            excl += not handed
    return ref, excl


def backing_problems(pool) -> list[str]:
    space, per = pool.space, pool.units.rstore_segments
    freeing: dict[int, int] = {}
    for t, _, _ in pool.journal.slots:
        freeing[id(t)] = freeing.get(id(t), 0) + 1
    for t, idx, _ in pool.journal.bulk_slots:
        freeing[id(t)] = freeing.get(id(t), 0) + len(idx)
    need: dict[str, int] = {}
    for (raid, ldad), n in space.reserve.items():
        t = space.tables.get((raid, ldad))
        slots = (t.nfree + freeing.get(id(t), 0)) if t is not None else 0
        need[ldad] = need.get(ldad, 0) + -(-max(0, n - slots) // per) * RAID_WIDTH[raid]
    out = []
    for ldad, psegs in need.items():
        free = pool.allocator.free_psegs(ldad)
        if free < psegs:
            out.append(f"LDAD {ldad}: reservations {dict(space.reserve)} need {psegs} PSEGs "
                       f"beyond the free slots, {free} are free")
    return out


def usage_problems(pool) -> list[str]:
    out = []
    seg = pool.units.segment
    lds = list(pool.lds_by_id.values())
    figures = usage.usage_by_name(lds)
    for ld in lds:
        f = figures[ld.name]
        got = (f["referenced"] // seg, f["exclusive"] // seg)
        want = reference(ld)
        if got != want:
            out.append(f"{ld.name}: (referenced, exclusive) {got} segments, the reference says {want}")
        if f["allocated"] != ld.allocated_segments() * seg or f["provisioned"] != ld.size:
            out.append(f"{ld.name}: allocated {f['allocated']} / provisioned {f['provisioned']} "
                       f"!= {ld.allocated_segments() * seg} / {ld.size}")
        if f["shared"] != f["referenced"] - f["exclusive"] or f["shared"] < 0:
            out.append(f"{ld.name}: shared {f['shared']} is not referenced - exclusive")
    total = sum(f["allocated"] for f in figures.values())
    pool_alloc = usage.pool_usage(pool)["allocated"]
    if total != pool_alloc:
        out.append(f"the LDs' allocated add up to {total}, the pool's RSD tables say {pool_alloc}")
    return out


def delete_measured(pool, name: str) -> tuple[int, int]:
    seg = pool.units.segment
    excl = usage.usage_by_name([pool.get(name)])[name]["exclusive"] // seg
    before = usage.pool_usage(pool)["allocated"] // seg
    pool.delete_ld(name)
    return excl, before - usage.pool_usage(pool)["allocated"] // seg
