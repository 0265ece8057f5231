"""The open transaction's change set: what the next commit must record, and what
it may release once durable (DESIGN.md §9).

Map changes are collected as "segment k of LD x changed" and turned into records
from the *current* entries when a commit is built, so a segment written a
thousand times between two commits costs one record. Logical records (ops.py)
keep their order. Freed slots and RSD indices wait here until the commit that
records their release is durable. Nothing is dropped before that: a commit that
fails leaves the change set as it was, for the next commit or a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FULL_LMAP_THRESHOLD = 256  # more touched entries than this in one LMAP: log it whole
# What building and packing a commit holds in memory (``estimate``): a record dict
# with its values and packed bytes; a changed entry (key, value, packed); a whole
# LMAP (its bytes and their packed copy) counts twice its size.
RECORD_MEM = 512
ENTRY_MEM = 24


@dataclass
class Mark:
    """How much of the change set a built commit covers. The touched segments and
    LMAPs it covers are taken out of the journal with it: changes made while the
    commit is written (it may run off the event loop) go to the next commit."""

    records: int
    slots: int
    rsd_ids: int
    bulk: int
    segs: dict
    lmaps: dict


class RStoreAdds:
    """The "rsa" records of RStores added to one table one after another, kept as
    index ranges until a commit builds them from the table: a thick create adds
    hundreds of thousands of RStores, and a record dict each would take more RAM
    than the maps themselves. Built from the rows as they are at commit time: a
    later "rsm" or "rsr" of the same commit then replays over the same result."""

    def __init__(self, table, idx: int):
        self.table = table
        self.ranges = [[idx, idx + 1]]

    def add(self, idx: int) -> None:
        r = self.ranges[-1]
        if idx == r[1]:
            r[1] += 1
        elif idx == r[0] - 1:        # free indices are reused from the top down
            r[0] -= 1
        else:
            self.ranges.append([idx, idx + 1])

    def __len__(self) -> int:
        return sum(hi - lo for lo, hi in self.ranges)

    def records(self):
        t = self.table
        for lo, hi in self.ranges:
            for i in range(lo, hi):
                yield {"t": "rsa", "raid": t.raid, "ldad": t.ldad, "i": i, "m": t.members(i)}


class Journal:
    def __init__(self):
        self.records: list[dict | RStoreAdds] = []
        self._adds: RStoreAdds | None = None     # the last record, while it may grow
        self.segs: dict[int, set[int]] = {}
        self.lmaps: dict[int, set[int]] = {}
        self.slots: list[tuple[object, int, int]] = []
        self.rsd_ids: list[tuple[object, int]] = []
        self.bulk_slots: list[tuple[object, np.ndarray, np.ndarray]] = []  # (table, RSD indices, slots)

    def add(self, rec: dict) -> None:
        self.records.append(rec)
        self._adds = None

    def add_rstore(self, table, idx: int) -> None:
        if self._adds is not None and self._adds.table is table:
            self._adds.add(idx)
        else:
            self._adds = RStoreAdds(table, idx)
            self.records.append(self._adds)

    def touch(self, ld_id: int, k: int) -> None:
        s = self.segs.get(ld_id)
        if s is None:
            s = self.segs[ld_id] = set()
        s.add(k)

    def touch_lmaps(self, ld_id: int, lis) -> None:
        self.lmaps.setdefault(ld_id, set()).update(lis)

    def forget(self, ld_id: int) -> None:
        """An LD is gone: its map changes need no record."""
        self.segs.pop(ld_id, None)
        self.lmaps.pop(ld_id, None)

    def empty(self) -> bool:
        return not (self.records or self.segs or self.lmaps or self.slots or self.rsd_ids
                    or self.bulk_slots)

    def estimate(self, lds: dict) -> int:
        """About how much memory ``build`` and packing its records would take."""
        n = RECORD_MEM * sum(len(r) if isinstance(r, RStoreAdds) else 1 for r in self.records)
        n += ENTRY_MEM * sum(len(s) for s in self.segs.values())
        for ld_id, lis in self.lmaps.items():
            ld = lds.get(ld_id)
            if ld is not None:
                n += 2 * len(lis) * ld.l2.nbytes_per_lmap
        return n

    def mark(self) -> Mark:
        """What a commit built now would cover (a checkpoint covers it all)."""
        self._adds = None
        m = Mark(len(self.records), len(self.slots), len(self.rsd_ids), len(self.bulk_slots),
                 self.segs, self.lmaps)
        self.segs, self.lmaps = {}, {}
        return m

    def restore(self, m: Mark) -> None:
        """The commit built with ``m`` failed: its touched segments go back into the
        change set (logical records, slots and ids never left it)."""
        for mine, theirs in ((self.segs, m.segs), (self.lmaps, m.lmaps)):
            for ld_id, ks in theirs.items():
                mine.setdefault(ld_id, set()).update(ks)
        m.segs, m.lmaps = {}, {}

    def build(self, lds: dict) -> tuple[list[dict], Mark]:
        """Records for a commit: logical ones in order, then map contents. The
        change set is kept until ``committed`` says the commit is durable."""
        mark = self.mark()
        out = []
        for r in self.records:
            if isinstance(r, RStoreAdds):
                out.extend(r.records())
            else:
                out.append(r)
        for ld_id in sorted(set(mark.segs) | set(mark.lmaps)):
            ld = lds.get(ld_id)
            if ld is None:
                continue
            l2 = ld.l2
            whole = set(mark.lmaps.get(ld_id, ()))
            ks = np.fromiter(mark.segs.get(ld_id, ()), dtype=np.int64)
            ks = ks[ks < l2.nsegs]
            if len(ks):
                lis, counts = np.unique(ks >> l2.shift, return_counts=True)
                whole.update(int(li) for li, c in zip(lis, counts) if c > FULL_LMAP_THRESHOLD)
                ks = ks[~np.isin(ks >> l2.shift, list(whole))] if whole else ks
            for li in sorted(whole):
                if li < len(l2.lmaps):
                    lm = l2.lmaps[li]
                    out.append({"t": "lmap", "ld": ld_id, "li": li,
                                "e": b"" if lm is None else lm.tobytes()})
            if len(ks):
                ks.sort()
                es = np.fromiter((l2.get(int(k)) for k in ks), dtype=np.uint32, count=len(ks))
                out.append({"t": "map", "ld": ld_id, "k": ks.astype(np.uint32).tobytes(),
                            "e": es.tobytes()})
        return out, mark

    def committed(self, m: Mark) -> tuple[list, list, list]:
        """The commit built with mark ``m`` is durable: forget what it recorded and
        hand back (slots, RSD indices, bulk slots) it made free."""
        del self.records[:m.records]
        slots, self.slots = self.slots[:m.slots], self.slots[m.slots:]
        ids, self.rsd_ids = self.rsd_ids[:m.rsd_ids], self.rsd_ids[m.rsd_ids:]
        bulk, self.bulk_slots = self.bulk_slots[:m.bulk], self.bulk_slots[m.bulk:]
        return slots, ids, bulk
