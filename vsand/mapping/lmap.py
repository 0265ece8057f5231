"""LMAP entries and the per-LD L2MAP. The entry layout is known only here.

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

Read caches of a sharing chain (disk/sharing.py) need to know when an entry
changes: while ``gens`` is a list (shared by every LD of the chain), every change
made here counts one in ``gens[LMAP index]``. Entries are changed only through
``set``, ``put`` and ``install``; bulk edits of a whole chain reset the caches.
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
SHARED = SP | SS
DATA_MASK = 0xFFFFFFFF & ~SHARED          # everything but the share bits
REF_MASK = (RSD_MASK << RSD_SHIFT) | SLOT_MASK
MAX_RSD = RSD_MASK + 1
SLOTS = 1 << SLOT_BITS


def make_entry(rsd: int, slot: int) -> int:
    assert 0 <= rsd < MAX_RSD and 0 <= slot < SLOTS
    return ALLOCATED | (rsd << RSD_SHIFT) | slot


def entry_rsd(e: int) -> int:
    return (e >> RSD_SHIFT) & RSD_MASK


def entry_slot(e: int) -> int:
    return e & SLOT_MASK


# ---- the same in bulk, over arrays of entries ----------------------------------------
def rsds(es: np.ndarray) -> np.ndarray:
    return ((es >> RSD_SHIFT) & RSD_MASK).astype(np.int64)


def slots(es: np.ndarray) -> np.ndarray:
    return (es & SLOT_MASK).astype(np.int64)


def slot_keys(es: np.ndarray) -> np.ndarray:
    """One integer per (RSD index, slot): ``rsd * SLOTS + slot``."""
    return rsds(es) * SLOTS + slots(es)


def key_rsd(key: int) -> int:
    return key // SLOTS


def key_slot(key: int) -> int:
    return key % SLOTS


def owned(es: np.ndarray) -> np.ndarray:
    """Mask of entries that hold data (allocated)."""
    return (es & STATE_MASK) == ALLOCATED


def unknown_state(es: np.ndarray) -> np.ndarray:
    return ((es & STATE_MASK) != 0) & ((es & STATE_MASK) != ALLOCATED)


def differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mask of pairs of resolved entries (holders' entries, share bits ignored) that
    may hold different bytes: not the same data entry, unless neither is allocated
    (both read zeros)."""
    return ((a & DATA_MASK) != (b & DATA_MASK)) & (((a | b) & STATE_MASK) != 0)


class L2map:
    gens: list[int] | None = None

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
        assert self.gens is None or nsegs == self.nsegs, "an LD in a sharing chain is never resized"
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
        g = self.gens
        if g is not None:
            g[li] += 1
        v = self.views[li]
        if v is None:
            if e == self.fill:
                return
            v = self.ensure(li)
        v[k & self.mask] = e

    def put(self, lo: int, arr: np.ndarray, sparse: bool = False) -> None:
        """Stores entries lo..lo+len(arr) (inside one LMAP). An absent LMAP is made
        present, because the fill that stands for it may change next and these
        entries must not change with it; ``sparse`` keeps it absent when every entry
        equals the fill."""
        li = lo >> self.shift
        if self.lmaps[li] is None:
            if sparse and not np.any(arr != self.fill):
                return
            self.ensure(li)
        g = self.gens
        if g is not None:
            g[li] += 1
        o = lo & self.mask
        self.lmaps[li][o:o + len(arr)] = arr

    def ensure(self, li: int) -> memoryview:
        if self.lmaps[li] is None:
            arr = np.full(self.per, self.fill, dtype=np.uint32)
            arr[max(0, self.nsegs - li * self.per):] = 0   # past the end: clear (resize)
            self.lmaps[li] = arr
            self.views[li] = memoryview(arr)
        return self.views[li]

    def install(self, li: int, arr: np.ndarray) -> None:
        assert arr.dtype == np.uint32 and len(arr) == self.per
        g = self.gens
        if g is not None:
            g[li] += 1
        self.lmaps[li] = arr
        self.views[li] = memoryview(arr)

    def clear(self) -> None:
        """Every entry unallocated and unshared (an LD that lost its data)."""
        self.fill = 0
        self.lmaps = [None] * len(self.lmaps)
        self.views = [None] * len(self.views)

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

    def ranges(self):
        """(lo, hi) segment ranges of each LMAP index, in order."""
        per, n = self.per, self.nsegs
        for li in range(-(-n // per)):
            yield li * per, min(n, (li + 1) * per)

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

    def allocated_count(self) -> int:
        """len(allocated()[0]), counted one LMAP at a time."""
        return sum(int(np.count_nonzero(lm & STATE_MASK)) for _, lm in self.items())

    def count(self, bits: int) -> int:
        """Entries with any of ``bits`` set, over the whole address space."""
        return sum(int(np.count_nonzero(self.entries(lo, hi) & bits)) for lo, hi in self.ranges())

    @property
    def nbytes_per_lmap(self) -> int:
        return self.per * np.dtype(np.uint32).itemsize

    def nbytes(self) -> int:
        return sum(lm.nbytes for _, lm in self.items())
