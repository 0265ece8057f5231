"""LMAP entries and the per-LD L2MAP.

One uint32 per 1 MiB segment (4 bytes per mapped MiB):

    bits 0-2    slot in the RStore (0-7)
    bits 3-27   RSD index in the LD's RSD table (32M RStores = 256 TiB per table)
    bits 28-29  state: 0 unallocated (reads as zeros), 1 allocated
    bit  30     Sp: my predecessor shares this segment with me
    bit  31     Ss: I share this segment with my successor (I own no data for it)

An L2MAP is a list with one LMAP (a numpy array of ``lmap_segments`` entries) per
2 GiB of address space, created on first use, so an unwritten LD costs nothing.
An absent LMAP reads as ``fill`` everywhere: share bits only (a snapshot of an
unwritten region shares it without materialising any LMAP).
"""

from __future__ import annotations

import numpy as np

SLOT_BITS = 3
SLOT_MASK = 0x7
RSD_SHIFT = 3
RSD_MASK = 0x1FFFFFF
STATE_SHIFT = 28
ALLOCATED = 1 << STATE_SHIFT
STATE_MASK = 0x3 << STATE_SHIFT
SP = 1 << 30
SS = 1 << 31
REF_MASK = (RSD_MASK << RSD_SHIFT) | SLOT_MASK
MAX_RSD = RSD_MASK + 1


def make_entry(rsd: int, slot: int) -> int:
    assert 0 <= rsd < MAX_RSD and 0 <= slot < 8
    return ALLOCATED | (rsd << RSD_SHIFT) | slot


def entry_rsd(e: int) -> int:
    return (e >> RSD_SHIFT) & RSD_MASK


def entry_slot(e: int) -> int:
    return e & SLOT_MASK


class L2map:
    def __init__(self, nsegs: int, lmap_segments: int):
        assert lmap_segments & (lmap_segments - 1) == 0, "LMAP size must be a power of two"
        self.per = lmap_segments
        self.shift = lmap_segments.bit_length() - 1
        self.mask = lmap_segments - 1
        self.nsegs = 0
        self.fill = 0       # the entry an absent LMAP stands for (share bits only)
        self.lmaps: list[np.ndarray | None] = []
        self.views: list[memoryview | None] = []  # fast scalar access to the same memory
        self.resize(nsegs)

    def resize(self, nsegs: int) -> None:
        """Grows or shrinks the address space; entries past the end must already be clear."""
        n = -(-nsegs // self.per)
        del self.lmaps[n:]
        del self.views[n:]
        self.lmaps.extend([None] * (n - len(self.lmaps)))
        self.views.extend([None] * (n - len(self.views)))
        if nsegs < self.nsegs and n and self.lmaps[-1] is not None:
            self.lmaps[-1][nsegs - (n - 1) * self.per:] = self.fill
        self.nsegs = nsegs

    def get(self, k: int) -> int:
        v = self.views[k >> self.shift]
        return self.fill if v is None else v[k & self.mask]

    def set(self, k: int, e: int) -> None:
        li = k >> self.shift
        v = self.views[li]
        if v is None:
            if e == self.fill:
                return
            v = self.ensure(li)
        v[k & self.mask] = e

    def ensure(self, li: int) -> memoryview:
        if self.lmaps[li] is None:
            arr = np.full(self.per, self.fill, dtype=np.uint32)
            arr[max(0, self.nsegs - li * self.per):] = 0   # past the end: clear (resize)
            self.lmaps[li] = arr
            self.views[li] = memoryview(arr)
        return self.views[li]

    def install(self, li: int, arr: np.ndarray) -> None:
        assert arr.dtype == np.uint32 and len(arr) == self.per
        self.lmaps[li] = arr
        self.views[li] = memoryview(arr)

    def entries(self, start: int, stop: int) -> np.ndarray:
        """Copy of entries [start, stop) as one array (``fill`` where no LMAP exists)."""
        out = np.full(stop - start, self.fill, dtype=np.uint32)
        k = start
        while k < stop:
            li = k >> self.shift
            hi = min(stop, (li + 1) * self.per)
            lm = self.lmaps[li]
            if lm is not None:
                out[k - start:hi - start] = lm[(k & self.mask):(k & self.mask) + hi - k]
            k = hi
        return out

    def items(self):
        """Yields (LMAP index, array) for every LMAP that exists."""
        for li, lm in enumerate(self.lmaps):
            if lm is not None:
                yield li, lm

    def allocated(self) -> tuple[np.ndarray, np.ndarray]:
        """(segment numbers, entries) of every allocated entry, in bulk."""
        ks, es = [], []
        for li, lm in self.items():
            idx = np.flatnonzero(lm & STATE_MASK)
            ks.append(idx + li * self.per)
            es.append(lm[idx])
        if not ks:
            return np.zeros(0, np.int64), np.zeros(0, np.uint32)
        return np.concatenate(ks).astype(np.int64), np.concatenate(es)

    def nbytes(self) -> int:
        return sum(lm.nbytes for _, lm in self.items())
