"""A logical disk: byte-range I/O over 1 MiB segments, thin allocation.

Requests are validated here once (range, length) and then split per segment.
A segment never written has an unallocated entry and reads as zeros without any
drive I/O; a newly allocated segment is zeroed on its members before a partial
write, so it can never show bytes of an earlier owner.
"""

from __future__ import annotations

import numpy as np

from ..errors import OutOfRange, ReadOnly
from ..mapping.lmap import ALLOCATED, L2map, SP, SS, entry_rsd, entry_slot
from .sharing import check_valid, resolve_range, start_chain_cache, unshare

SHARED = SP | SS
DIRECT_HOPS = 4   # a read walks this many successors itself before using the chain cache


class ChainL2map(L2map):
    """An L2MAP that counts map changes per LMAP index in ``gens``, a list shared by
    every LD of its sharing chain (None while nobody caches reads through the chain).
    Every map change of a chained LD goes through ``set`` or ``install``; the bulk
    edits of link_snapshot/unlink reset the chain's caches instead (``reset_chain``)."""

    gens: list[int] | None = None

    def set(self, k: int, e: int) -> None:
        g = self.gens
        if g is not None:
            g[k >> self.shift] += 1
        L2map.set(self, k, e)

    def install(self, li: int, arr: np.ndarray) -> None:
        g = self.gens
        if g is not None:
            g[li] += 1
        L2map.install(self, li, arr)

    def resize(self, nsegs: int) -> None:
        assert self.gens is None or nsegs == self.nsegs, "a shared LD is never resized"
        L2map.resize(self, nsegs)


class LogicalDisk:
    def __init__(self, pool, ld_id: int, name: str, size: int, raid: int, ldad: str,
                 attrs: dict | None = None):
        self.pool = pool
        self.id = ld_id
        self.name = name
        self.size = size
        self.raid = raid
        self.ldad = ldad
        self.attrs = dict(attrs or {})
        u = pool.units
        self.seg = u.segment
        self.l2 = ChainL2map(size // u.segment, u.lmap_segments)
        self.table = pool.space.table(raid, ldad)
        self.open_rsd: int | None = None
        self.succ: LogicalDisk | None = None
        self.pred: LogicalDisk | None = None
        self.invalid = bool(self.attrs.get("invalid"))
        # Reads through a deep chain: per LMAP index, (gens, gens[li] when built, the
        # resolved entries as a memoryview); see _entry.
        self._rcache: list | None = None

    # ---- helpers -----------------------------------------------------------------
    def _check(self, off: int, n: int) -> None:
        if off < 0 or n < 0 or off + n > self.size:
            raise OutOfRange(f"{self.name}: range {off}+{n} is outside 0..{self.size}")
        if self.invalid:
            check_valid(self)

    def _check_writable(self) -> None:
        if self.attrs.get("read_only"):
            raise ReadOnly(f"{self.name} is read-only")

    def _pieces(self, off: int, n: int):
        seg = self.seg
        end = off + n
        while off < end:
            k, so = divmod(off, seg)
            m = min(seg - so, end - off)
            yield k, so, m
            off += m

    def _seeded(self, k: int) -> bool:
        """My successor's Sp stands over my own copy (a snapclone's seed), so my bytes
        for k must not change before it is cleared."""
        s = self.succ
        return s is not None and bool(s.l2.get(k) & SP)

    def _holder(self, k: int) -> tuple["LogicalDisk", int]:
        ld, e = self, self.l2.get(k)
        while e & SS:
            ld = ld.succ
            e = ld.l2.get(k)
        return ld, e

    def _entry(self, k: int) -> int:
        """The entry that holds segment k's data for reads: mine, or that of the first
        successor that owns it. Every LD of a chain has the same RAID type and LDAD,
        so the entry is read with ``self.table``. Deep chains use a cache of resolved
        LMAPs, rebuilt when a map of the chain changed in that LMAP."""
        l2 = self.l2
        e = l2.get(k)
        if not e & SS:
            return e
        li = k >> l2.shift
        rc = self._rcache
        if rc is not None:
            c = rc[li]
            if c is not None and c[0] is l2.gens and c[1] == c[0][li]:
                return c[2][k & l2.mask]
        ld = self
        for _ in range(DIRECT_HOPS):
            ld = ld.succ
            e = ld.l2.get(k)
            if not e & SS:
                return e
        g = l2.gens
        if g is None:
            g = start_chain_cache(self)
        return self._resolve(li, g)[2][k & l2.mask]

    def _resolve(self, li: int, g: list[int]):
        l2 = self.l2
        lo = li * l2.per
        hi = min(l2.nsegs, lo + l2.per)
        c = self._rcache[li] = (g, g[li], memoryview(resolve_range(self, lo, hi)))
        return c

    # ---- read --------------------------------------------------------------------
    def read(self, off: int, n: int) -> bytes:
        self._check(off, n)
        pool = self.pool
        seg = self.seg
        k, so = divmod(off, seg)
        if so + n <= seg:  # fast path: one segment
            e = self._entry(k)
            if not e & ALLOCATED:
                return bytes(n)
            return pool.rio.read(self.raid, pool.space.members(self.table, entry_rsd(e)),
                                 entry_slot(e), so, n)
        buf = bytearray(n)     # holes stay zero; data lands in place, no join
        mv = memoryview(buf)
        pos = 0
        for k, so, m in self._pieces(off, n):
            e = self._entry(k)
            if e & ALLOCATED:
                pool.rio.read_into(self.raid, pool.space.members(self.table, entry_rsd(e)),
                                   entry_slot(e), so, mv[pos:pos + m])
            pos += m
        return buf

    # ---- write -------------------------------------------------------------------
    def write(self, off: int, data) -> None:
        n = len(data)
        if off < 0 or off + n > self.size:
            raise OutOfRange(f"{self.name}: range {off}+{n} is outside 0..{self.size}")
        if self.attrs.get("read_only"):
            raise ReadOnly(f"{self.name} is read-only")
        if self.invalid:
            check_valid(self)
        k, so = divmod(off, self.seg)
        if so + n <= self.seg:   # hot path: one segment
            if n:
                self._write_segment(k, so, data)
            return
        mv = memoryview(data).cast("B")
        pos = 0
        for k, so, m in self._pieces(off, len(mv)):
            self._write_segment(k, so, mv[pos:pos + m])
            pos += m

    def _write_segment(self, k: int, so: int, data) -> None:
        pool = self.pool
        e = self.l2.get(k)
        if e & SHARED or self._seeded(k):
            unshare(self, k, whole=len(data) == self.seg)
            e = self.l2.get(k)
        zero = False
        if not e & ALLOCATED:
            e, fresh = pool.space.alloc_segment(self)
            zero = not fresh and len(data) < self.seg
            self.l2.set(k, e)
            pool.journal.touch(self.id, k)
        members = pool.space.members(self.table, entry_rsd(e))
        if zero:
            pool.rio.zero(self.raid, members, entry_slot(e))
        pool.intend(self.table, entry_rsd(e))
        pool.rio.write(self.raid, members, entry_slot(e), so, data)

    def _zero_range(self, off: int, n: int) -> None:
        self._check(off, n)
        self._check_writable()
        pool = self.pool
        for k, so, m in self._pieces(off, n):
            e = self.l2.get(k)
            if e & SHARED or self._seeded(k):
                unshare(self, k, whole=m == self.seg, trim=m == self.seg)
                e = self.l2.get(k)
            if not e & ALLOCATED:
                continue
            if m == self.seg:
                self.l2.set(k, 0)
                pool.space.free_segment(self, e)
                pool.journal.touch(self.id, k)
            else:
                members = pool.space.members(self.table, entry_rsd(e))
                pool.intend(self.table, entry_rsd(e))
                pool.rio.write(self.raid, members, entry_slot(e), so, bytes(m))

    def trim(self, off: int, n: int) -> None:
        """Whole segments are unmapped (and read as zeros); partial ones are zeroed."""
        self._zero_range(off, n)

    def write_zeroes(self, off: int, n: int, may_trim: bool = True) -> None:
        """Zeroes a range; ``may_trim`` lets whole segments be unmapped (they read
        as zeros), otherwise they stay allocated (NBD NO_HOLE)."""
        if may_trim:
            self._zero_range(off, n)
        else:
            self.provision_zeroes(off, n)

    @property
    def read_only(self) -> bool:
        return bool(self.attrs.get("read_only"))

    def flush(self) -> None:
        self.pool.flush()

    # ---- whole-LD operations (called by the pool) ------------------------------
    def free_from(self, k0: int) -> None:
        """Unmaps every segment at index >= k0 (shrink, delete)."""
        ks, es = self.l2.allocated()
        sel = ks >= k0
        for k, e in zip(ks[sel].tolist(), es[sel].tolist()):
            self.pool.space.free_segment(self, e)
            self.l2.set(k, 0)
        self.pool.journal.touch_lmaps(self.id, {k >> self.l2.shift for k in ks[sel].tolist()})

    def share_counts(self) -> tuple[int, int]:
        """(segments whose data this LD owns, segments it reads through its successor)."""
        owned, _ = self.l2.allocated()
        shared = 0
        per = self.l2.per
        for li in range(len(self.l2.lmaps)):
            lo, hi = li * per, min((li + 1) * per, self.l2.nsegs)
            shared += int(np.count_nonzero(self.l2.entries(lo, hi) & SS))
        return len(owned), shared

    def allocated_segments(self) -> int:
        ks, _ = self.l2.allocated()
        return len(ks)

    def info(self) -> dict:
        out = {"id": self.id, "name": self.name, "size": self.size, "raid": self.raid,
               "ldad": self.ldad, "allocated": self.allocated_segments() * self.seg,
               **self.attrs}
        if self.pred is not None or self.succ is not None:
            out["predecessor"] = self.pred.name if self.pred else None
            out["successor"] = self.succ.name if self.succ else None
            out.setdefault("space", "lun")
        return out

    # ---- sparseness (NBD block status, structured reads) ---------------------------
    def extents(self, off: int, n: int) -> list[tuple[int, bool]]:
        """[(length, allocated)] covering exactly [off, off+n), adjacent runs merged."""
        self._check(off, n)
        out: list[list] = []
        for k, so, m in self._pieces(off, n):
            alloc = bool(self._entry(k) & ALLOCATED)
            if out and out[-1][1] == alloc:
                out[-1][0] += m
            else:
                out.append([m, alloc])
        return [(m, a) for m, a in out]

    def read_sparse(self, off: int, n: int) -> list[tuple[int, int, bytes | None]]:
        """[(offset, length, data or None for a hole that reads as zeros)]."""
        k, so = divmod(off, self.seg)
        if so + n <= self.seg and n and off >= 0 and off + n <= self.size:   # hot path
            return [(off, n, self.read(off, n) if self._entry(k) & ALLOCATED else None)]
        res, pos = [], off
        for m, alloc in self.extents(off, n):
            res.append((pos, m, self.read(pos, m) if alloc else None))
            pos += m
        return res

    def provision_zeroes(self, off: int, n: int) -> None:
        """Zeroes [off, off+n) keeping every segment allocated (NBD NO_HOLE), so
        later writes there cannot fail for lack of space."""
        self._check(off, n)
        self._check_writable()
        pool = self.pool
        for k, so, m in self._pieces(off, n):
            e = self.l2.get(k)
            if e & SHARED or self._seeded(k):
                unshare(self, k, whole=m == self.seg)
                e = self.l2.get(k)
            if e & ALLOCATED and m < self.seg:
                self._write_segment(k, so, bytes(m))
                continue
            if not e & ALLOCATED:
                e, fresh = pool.space.alloc_segment(self)
                self.l2.set(k, e)
                pool.journal.touch(self.id, k)
                if fresh:
                    continue
            pool.intend(self.table, entry_rsd(e))
            pool.rio.zero(self.raid, pool.space.members(self.table, entry_rsd(e)), entry_slot(e))
