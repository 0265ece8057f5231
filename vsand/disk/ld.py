"""A logical disk: byte-range I/O over 1 MiB segments, thin allocation.

Requests are validated here once (range, length) and then split per segment.
A segment never written has an unallocated entry and reads as zeros without any
drive I/O; a newly allocated segment is zeroed on its members before a partial
write, so it can never show bytes of an earlier owner. Map changes go through
ops.Ops (``pool.ops``), copies on first write through cfw.py.

An LD that may not be read or written says so in ``read_refusal`` /
``write_refusal`` (an error to raise, or None), recomputed by ``refresh`` whenever
its role, its attributes or the pool's state change, so the hot path tests one
attribute.
"""

from __future__ import annotations


from ..errors import IOFailure, OutOfRange, ReadOnly
from ..mapping.lmap import ALLOCATED, SHARED, SP, SS, L2map, entry_rsd, entry_slot
from ..physical.readjob import ReadJob, read_cached
from .cfw import redirect, unshare
from .role import Role, kind
from .sharing import resolve_range, start_chain_cache

DIRECT_HOPS = 4   # a read walks this many successors itself before using the chain cache


class LogicalDisk:
    def __init__(self, pool, ld_id: int, name: str, size: int, raid: int, ldad: str,
                 role: Role = Role.LUN, attrs: dict | None = None):
        self.pool = pool
        self.id = ld_id
        self.name = name
        self.size = size
        self.raid = raid
        self.ldad = ldad
        self.role = role
        self.attrs = dict(attrs or {})   # read_only, and where it came from (snapshot_of ...)
        u = pool.units
        self.seg = u.segment
        self.l2 = L2map(size // u.segment, u.lmap_segments)
        self.table = pool.space.table(raid, ldad)
        self.open_rsd: int | None = None
        self.succ: LogicalDisk | None = None
        self.pred: LogicalDisk | None = None
        self.reserve_left = 0
        self.read_refusal: Exception | None = None
        self.write_refusal: Exception | None = None
        # Reads through a deep chain: per LMAP index, (gens, gens[li] when built, the
        # resolved entries as a memoryview); see _entry.
        self._rcache: list | None = None
        self.refresh()

    def refresh(self) -> None:
        if self.role.invalid:
            err = IOFailure(f"{self.name} was invalidated (its snapshot space ran out); delete it")
            self.read_refusal = self.write_refusal = err
            return
        self.read_refusal = None
        failed = self.pool.tx.failure()
        if failed is not None:
            self.write_refusal = failed
        elif self.attrs.get("read_only"):
            self.write_refusal = ReadOnly(f"{self.name} is read-only")
        else:
            self.write_refusal = None

    @property
    def invalid(self) -> bool:
        return self.role.invalid

    # ---- helpers -----------------------------------------------------------------
    def _check(self, off: int, n: int) -> None:
        if off < 0 or n < 0 or off + n > self.size:
            raise OutOfRange(f"{self.name}: range {off}+{n} is outside 0..{self.size}")
        if self.read_refusal is not None:
            raise _again(self.read_refusal)

    def _check_writable(self, off: int, n: int) -> None:
        if off < 0 or n < 0 or off + n > self.size:
            raise OutOfRange(f"{self.name}: range {off}+{n} is outside 0..{self.size}")
        if self.write_refusal is not None:
            raise _again(self.write_refusal)

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

    def _unshare(self, k: int, whole: bool, trim: bool = False) -> int:
        unshare(self, k, whole, trim, self.pool.eager_clones)
        return self.l2.get(k)

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
        if not n:          # off == size is a valid empty range: there is no segment there
            return b""
        pool = self.pool
        if pool.stripes.jobs and pool.failed_drives:
            pool.stripes.drain()     # a stripe rebuilt from the other members must be still
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

    def read_now(self, off: int, n: int) -> bytearray | ReadJob | None:
        """``read_job``, except that a read of one drive piece that the page cache
        holds is done at once, without a job: its bytes (nothing is fenced, since
        nothing can change between the map lookup and the read)."""
        self._check(off, n)
        pool = self.pool
        k, so = divmod(off, self.seg)
        if so + n > self.seg:
            return self.read_job(off, n)
        e = self._entry(k)
        if not e & ALLOCATED:
            return ReadJob(n, [], True, pool.space.fence)
        pieces: list = []
        if not pool.rio.plan(self.raid, pool.space.members(self.table, entry_rsd(e)),
                             entry_slot(e), so, n, 0, pieces):
            return None
        tried = False
        if len(pieces) == 1:
            drive, doff, _, _ = pieces[0]
            got = read_cached(drive, doff, n)
            if got.__class__ is bytearray:
                return got
            tried = got
        return ReadJob(n, pieces, False, pool.space.fence, tried)

    def read_job(self, off: int, n: int) -> ReadJob | None:
        """The read of [off, off+n) resolved now, its drive I/O to run later (maybe
        in another thread; see physical/readjob.py), fenced so that nothing it
        resolved is reused before ``done``. None when a piece needs recovery from
        redundancy: then ``read`` does it."""
        self._check(off, n)
        pool = self.pool
        pieces: list = []
        k, so = divmod(off, self.seg)
        if so + n <= self.seg:   # hot path: one segment
            e = self._entry(k)
            if not e & ALLOCATED:
                return ReadJob(n, pieces, True, pool.space.fence)
            if pool.rio.plan(self.raid, pool.space.members(self.table, entry_rsd(e)),
                             entry_slot(e), so, n, 0, pieces):
                return ReadJob(n, pieces, False, pool.space.fence)
            return None
        holes = False
        pos = 0
        for k, so, m in self._pieces(off, n):
            e = self._entry(k)
            if not e & ALLOCATED:
                holes = True
            elif not pool.rio.plan(self.raid, pool.space.members(self.table, entry_rsd(e)),
                                   entry_slot(e), so, m, pos, pieces):
                return None
            pos += m
        return ReadJob(n, pieces, holes, pool.space.fence)

    # ---- write -------------------------------------------------------------------
    def write(self, off: int, data) -> None:
        self.pool.stripes.drain()    # written here, now: after the jobs before it
        n = len(data)
        if off < 0 or off + n > self.size:
            raise OutOfRange(f"{self.name}: range {off}+{n} is outside 0..{self.size}")
        if self.write_refusal is not None:
            raise _again(self.write_refusal)
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

    def write_job(self, off: int, data):
        """``write`` with its drive I/O handed back as a WriteJob
        (redundancy/writejob.py) to run later, maybe in a worker thread; the map
        work is done here. None when the pool writes on the loop (buffered drives:
        the page cache takes a write faster than a thread hop) and it is written.
        ``data`` must stay unchanged until the job is done."""
        pool = self.pool
        if not pool.write_jobs:
            self.write(off, data)
            return None
        n = len(data)
        if off < 0 or off + n > self.size:
            raise OutOfRange(f"{self.name}: range {off}+{n} is outside 0..{self.size}")
        if self.write_refusal is not None:
            raise _again(self.write_refusal)
        mv = memoryview(data).cast("B")
        pieces = []
        pos = 0
        for k, so, m in self._pieces(off, n):
            members, slot = self._prepare(k, m)
            pieces.append((self.raid, members, slot, so, mv[pos:pos + m]))
            pos += m
        return pool.stripes.job(pieces)

    def _prepare(self, k: int, n: int) -> tuple[list, int]:
        """The map work before ``n`` bytes are written to segment k: copy on first
        write, allocation (a reused slot is zeroed first unless the write covers
        it), the write intent. Returns the stripe: (members, slot)."""
        pool = self.pool
        e = self.l2.get(k)
        if e & SHARED or self._seeded(k):
            e = self._unshare(k, whole=n == self.seg)
        e = self._off_handed(k, e, whole=n == self.seg)
        zero = False
        if not e & ALLOCATED:
            e, fresh = pool.space.alloc_segment(self)
            zero = not fresh and n < self.seg
            pool.ops.set_entry(self, k, e)
        members = pool.space.members(self.table, entry_rsd(e))
        if zero:
            pool.rio.zero(self.raid, members, entry_slot(e))
        pool.tx.intend(self.table, entry_rsd(e))
        return members, entry_slot(e)

    def _off_handed(self, k: int, e: int, whole: bool) -> int:
        """Entry ``e`` of segment k, moved to a new segment first if a copy on first
        write handed it to this LD since the last commit (see cfw.redirect)."""
        if e & ALLOCATED and self.pool.space.handed_over(self.table, e):
            e = redirect(self, k, e, whole)
            self.pool.ops.set_entry(self, k, e)
        return e

    def _write_segment(self, k: int, so: int, data) -> None:
        members, slot = self._prepare(k, len(data))
        self.pool.rio.write(self.raid, members, slot, so, data)

    def _zero_range(self, off: int, n: int) -> None:
        self._check_writable(off, n)
        pool = self.pool
        pool.stripes.drain()     # it frees or rewrites in place what a write may be writing
        for k, so, m in self._pieces(off, n):
            e = self.l2.get(k)
            if e & SHARED or self._seeded(k):
                e = self._unshare(k, whole=m == self.seg, trim=m == self.seg)
            if not e & ALLOCATED:
                continue
            if m == self.seg:
                pool.ops.set_entry(self, k, 0)
                pool.space.free_segment(self, e)
            else:
                self._write_segment(k, so, bytes(m))

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
    def defers_writes(self) -> bool:
        """``write_job`` hands back jobs: the data must then be owned by the caller."""
        return self.pool.write_jobs

    @property
    def read_only(self) -> bool:
        return bool(self.attrs.get("read_only"))

    def flush(self) -> None:
        self.pool.flush()

    # ---- whole-LD figures ---------------------------------------------------------
    def share_counts(self) -> tuple[int, int]:
        """(segments whose data this LD owns, segments it reads through its successor)."""
        return self.allocated_segments(), self.l2.count(SS)

    def allocated_segments(self) -> int:
        return self.l2.allocated_count()

    def info(self) -> dict:
        """What vsanctl shows. ``role`` and ``state`` say what the LD is; the older
        keys (``space``, ``clone``, ``invalid``) say the same for scripts."""
        out = {"id": self.id, "name": self.name, "size": self.size, "raid": self.raid,
               "ldad": self.ldad, "allocated": self.allocated_segments() * self.seg,
               "role": self.role.value, "kind": kind(self.role, self.attrs),
               "origin": self.attrs.get("snapshot_of") or self.attrs.get("snapclone_of"),
               "state": self.state(), **self.attrs}
        r = self.role
        if r.snapshot or (r.invalid and "snapshot_of" in self.attrs):
            out["space"] = "reserve" if r is Role.RESERVED_SNAPSHOT else "on-demand"
        if r.copying:
            out["space"] = "reserve"
            out["clone"] = "copying"
        elif r is Role.CLONE:
            out["clone"] = "independent"
        if r.invalid:
            out["invalid"] = True
        if self.pred is not None or self.succ is not None:
            out["predecessor"] = self.pred.name if self.pred else None
            out["successor"] = self.succ.name if self.succ else None
            out.setdefault("space", "lun")
        return out

    def state(self) -> str:
        if self.role.invalid:
            return "invalid"
        if self.write_refusal is not None and not self.read_only:
            return "read-only (pool)"
        return "copying" if self.role.copying else "ok"

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
        if so + n <= self.seg and n and off >= 0 and off + n <= self.size \
                and self.read_refusal is None:                                  # hot path
            return [(off, n, self.read(off, n) if self._entry(k) & ALLOCATED else None)]
        res, pos = [], off
        for m, alloc in self.extents(off, n):
            res.append((pos, m, self.read(pos, m) if alloc else None))
            pos += m
        return res

    def provision_zeroes(self, off: int, n: int) -> None:
        """Zeroes [off, off+n) keeping every segment allocated (NBD NO_HOLE), so
        later writes there cannot fail for lack of space."""
        self._check_writable(off, n)
        pool = self.pool
        pool.stripes.drain()     # it rewrites in place what a write may be writing
        for k, so, m in self._pieces(off, n):
            e = self.l2.get(k)
            if e & SHARED or self._seeded(k):
                e = self._unshare(k, whole=m == self.seg)
            if e & ALLOCATED and m < self.seg:
                self._write_segment(k, so, bytes(m))
                continue
            e = self._off_handed(k, e, whole=True)     # if it moves, a new segment: zeroed below
            if not e & ALLOCATED:
                e, fresh = pool.space.alloc_segment(self)
                pool.ops.set_entry(self, k, e)
                if fresh:
                    continue
            pool.tx.intend(self.table, entry_rsd(e))
            pool.rio.zero(self.raid, pool.space.members(self.table, entry_rsd(e)), entry_slot(e))


def _again(err: Exception) -> Exception:
    """A fresh exception like ``err`` (raising one instance again and again would
    chain every traceback onto it)."""
    return type(err)(err.message)
