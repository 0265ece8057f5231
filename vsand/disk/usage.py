"""Space accounting (issue 13 item 4): what each LD, each sharing chain and the pool
use, in the spirit of ``rbd du`` and ZFS used/refer/usedbysnapshots.

Per LD, in bytes (segments x segment size):

    provisioned  its size
    allocated    segments whose entry it owns (allocated state); summed over a
                 chain, that chain's real use
    referenced   segments it reads data for: its own allocated entries and the
                 allocated entries of the successors it reads through
    exclusive    what deleting it frees: the rule of ``sharing.unlink`` — its
                 allocated entries, less those its predecessor reads through it
                 (Ss over my Sp), which a delete hands over. A seed (my Sp over a
                 predecessor's own copy) hands nothing, so it counts here.
    shared       referenced - exclusive: data it reads that another LD reads too

Only the share bits decide: a chain's order says nothing about age (a revert
reorders it). Every figure is numpy work over the LMAP arrays, one LMAP index of
a chain at a time; an index no LD of the chain has an LMAP for is all fills
(share bits only, no data) and is skipped.
"""

from __future__ import annotations

import numpy as np

from ..mapping.lmap import SS, STATE_MASK
from ..physical.allocator import RAID_WIDTH
from .sharing import chain_of, passes_down

SPAN_LMAPS = 32       # LMAPs of a chain counted in one go


def chain_segments(chain: list) -> list[dict[str, int]]:
    """Segment counts (allocated, referenced, exclusive) of every LD of ``chain``
    (oldest first, as ``sharing.chain_of`` gives it), in the same order."""
    n = len(chain)
    alloc = [0] * n
    ref = [0] * n
    excl = [0] * n
    for lo, hi in _spans(chain):
        es = [ld.l2.entries(lo, hi) for ld in chain]
        owns = [(e & STATE_MASK) != 0 for e in es]
        ss = [(e & SS) != 0 for e in es]
        reads = owns[-1]            # "reads allocated data", resolved from the newest down
        for i in range(n - 1, -1, -1):
            if i < n - 1:
                reads = np.where(ss[i], reads, owns[i])
            ref[i] += int(np.count_nonzero(reads))
            alloc[i] += int(np.count_nonzero(owns[i]))
            mine = owns[i]
            if i:      # what the predecessor reads through me passes to it on a delete
                mine = mine & ~passes_down(es[i], es[i - 1])
            excl[i] += int(np.count_nonzero(mine))
    return [{"allocated": a, "referenced": r, "exclusive": x} for a, r, x in zip(alloc, ref, excl)]


def _spans(chain: list):
    """(lo, hi) segment ranges of up to SPAN_LMAPS LMAPs with an LMAP in some LD of
    the chain: fewer, larger numpy operations; bounded temporaries."""
    if not chain:
        return
    l2 = chain[0].l2
    assert all(ld.l2.nsegs == l2.nsegs for ld in chain), "an LD in a sharing chain is never resized"
    present = np.zeros(len(l2.lmaps), dtype=bool)
    for ld in chain:
        present |= np.fromiter((lm is not None for lm in ld.l2.lmaps), dtype=bool, count=len(l2.lmaps))
    for first in range(0, len(present), SPAN_LMAPS):
        got = np.flatnonzero(present[first:first + SPAN_LMAPS])
        if len(got):
            a, b = first + int(got[0]), first + int(got[-1]) + 1
            yield a * l2.per, min(l2.nsegs, b * l2.per)


def chain_usage(chain: list) -> list[dict]:
    """The figures of the module docstring, in bytes, for every LD of ``chain``."""
    out = []
    for ld, c in zip(chain, chain_segments(chain)):
        seg = ld.seg
        out.append({"name": ld.name, "provisioned": ld.size, "allocated": c["allocated"] * seg,
                    "referenced": c["referenced"] * seg, "exclusive": c["exclusive"] * seg,
                    "shared": (c["referenced"] - c["exclusive"]) * seg})
    return out


def chains(lds) -> list[list]:
    """The sharing chains ``lds`` belong to (an LD alone is a chain of one), each
    oldest first, each once."""
    seen: set[int] = set()
    out = []
    for ld in lds:
        if ld.id in seen:
            continue
        c = chain_of(ld)
        seen.update(m.id for m in c)
        out.append(c)
    return out


def usage_by_name(lds) -> dict[str, dict]:
    """name -> figures for every LD of ``lds`` (each chain walked once)."""
    want = {ld.name for ld in lds}
    return {u["name"]: u for c in chains(lds) for u in chain_usage(c) if u["name"] in want}


def pool_usage(pool) -> dict[str, int]:
    """The pool's figures, in bytes:

    capacity   every PSEG of every drive (as ``vsanctl status``)
    free       PSEGs new data may take (as ``vsanctl status``)
    used       capacity - free: data with its RAID overhead, metadata, spare room
               held back for metadata, failed drives
    physical   PSEGs of the RStores that hold LD data (RAID overhead included;
               part of an RStore may be free slots)
    allocated  segments the RSD tables give to LDs: the sum of every LD's
               ``allocated``. Slots freed since the last commit are not in it
               (``freeing``), slots waiting for reads still running off the loop
               are (for the moment those reads take)
    freeing    slots freed by the open transaction, free once it commits
    reserved   segments promised to reserved snapshots and copying snapclones
    """
    u = pool.units
    alloc = pool.allocator
    capacity = sum(alloc.drives[i].npsegs for i in pool.drive_recs) * u.pseg
    free = alloc.free_psegs() * u.pseg
    physical = used_slots = 0
    for t in pool.space.tables.values():
        live = len(t.live_indices())
        physical += live * RAID_WIDTH[t.raid]
        used_slots += live * u.rstore_segments - t.nfree
    j = pool.journal
    freeing = len(j.slots) + sum(len(idx) for _, idx, _ in j.bulk_slots)
    return {"capacity": capacity, "free": free, "used": capacity - free,
            "physical": physical * u.pseg, "allocated": (used_slots - freeing) * u.segment,
            "freeing": freeing * u.segment, "reserved": pool.space.reserve_segs * u.segment}
