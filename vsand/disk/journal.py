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


@dataclass
class Mark:
    """How much of the change set a built commit covers."""

    records: int
    slots: int
    rsd_ids: int
    bulk: int


class Journal:
    def __init__(self):
        self.records: list[dict] = []
        self.segs: dict[int, set[int]] = {}
        self.lmaps: dict[int, set[int]] = {}
        self.slots: list[tuple[object, int, int]] = []
        self.rsd_ids: list[tuple[object, int]] = []
        self.bulk_slots: list[tuple[object, np.ndarray, np.ndarray]] = []  # (table, RSD indices, slots)

    def add(self, rec: dict) -> None:
        self.records.append(rec)

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

    def build(self, lds: dict) -> tuple[list[dict], Mark]:
        """Records for a commit: logical ones in order, then map contents. The
        change set is kept until ``committed`` says the commit is durable."""
        out = list(self.records)
        for ld_id in sorted(set(self.segs) | set(self.lmaps)):
            ld = lds.get(ld_id)
            if ld is None:
                continue
            l2 = ld.l2
            whole = set(self.lmaps.get(ld_id, ()))
            ks = np.fromiter(self.segs.get(ld_id, ()), dtype=np.int64)
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
        return out, Mark(len(self.records), len(self.slots), len(self.rsd_ids), len(self.bulk_slots))

    def committed(self, m: Mark) -> tuple[list, list, list]:
        """The commit built with mark ``m`` is durable: forget what it recorded and
        hand back (slots, RSD indices, bulk slots) it made free."""
        del self.records[:m.records]
        self.segs.clear()
        self.lmaps.clear()
        slots, self.slots = self.slots[:m.slots], self.slots[m.slots:]
        ids, self.rsd_ids = self.rsd_ids[:m.rsd_ids], self.rsd_ids[m.rsd_ids:]
        bulk, self.bulk_slots = self.bulk_slots[:m.bulk], self.bulk_slots[m.bulk:]
        return slots, ids, bulk
