"""Model checks of snapshots and sharing chains (DESIGN.md §7, §9, §12).

1. ``SnapshotMachine``: a hypothesis state machine drives random create (RAID
   0/1/5, 2-8 MiB LUNs) / write (unaligned, segment-crossing, whole segments) /
   trim / write_zeroes (with and without may_trim) / snapshot of any LD (a LUN or
   any snapshot, on demand or reserved) / delete of any LD (anywhere in a chain) /
   resize (refused inside a chain) / revert of a LUN to any snapshot of its chain,
   keeping its bytes before as a snapshot or not / flush / checkpoint / clean restart / crash
   restart on a pool whose LMAPs are sometimes tiny (many LMAPs and absent-LMAP
   fills per LD) and whose metadata log is sometimes tiny (checkpoints in the
   middle of a copy on first write). In half the examples the pool is tight and a
   filler LUN eats the free space, so copies on first write run out of room
   (on-demand snapshots get invalidated, reserved ones must not). The model is a
   bytearray per LD (a snapshot copies its source's bytearray) plus the chains.
   After every step:

   - every LD reads byte for byte as its model, and the chains are the model's;
   - ``check_pool(pool) == []`` (share-bit invariants, RSDs, free maps);
   - ``engine_invariants`` (map -> RSD references, slots, PSEG ownership);
   - slot accounting: the allocated slots referenced by the LMAP entries of all LDs
     are exactly the used slots of the RSD tables (used = live RStore slots not on
     the free list and not freed-but-uncommitted), each referenced once;
   - PSEG accounting: the PSEGs marked used are exactly the PSEGs of live RStores
     + the checkpoint copies + ``allocator.pending``, none owned twice;
   - the snapshot reservation (``space.reserve_segs``) is zero when no reserved
     snapshot exists (no leaked reservation);
   - space accounting (usage_invariants.py): every LD's referenced / exclusive
     agree with a segment-by-segment reference, the LDs' allocated sum to the
     pool's, and a delete frees exactly the deleted LD's exclusive segments;
   - changed-block diffs (disk/diff.py) are a safe superset (``check_diffs``): for
     each pair of LDs of one chain, unreported segments hold equal model bytes,
     segments both read from one entry are unreported, the order does not matter;
     alone, an LD's diff is its allocated segments; other chains are refused.

2. Reserve vs on-demand space in a tiny pool (deterministic): an on-demand
   snapshot whose copy finds no space is invalidated (IOFailure on reads, shown in
   info, durable, deletable, its space comes back) while the LUN write succeeds; a
   reserved snapshot fails with NoSpace when no full copy fits and is otherwise
   never invalidated, whichever RAID type fills the pool; its reservation is given
   back on delete, also after writes into the snapshot itself.

``VSAND_SNAP_EXAMPLES`` overrides the example count (default 40) for bug hunts.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from commit_faults import (  # noqa: E402
    PERSISTENT,
    Faults,
    SyncWatch,
    arm_persistent,
    assert_read_only,
    kill_now,
    refused_read_only,
    reopen_after_read_only,
    run_one_shot,
)
from engine_invariants import check_invariants  # noqa: E402
from usage_invariants import backing_problems, delete_measured, usage_problems  # noqa: E402

from vsand.disk import diff  # noqa: E402
from vsand.disk.check import check_pool  # noqa: E402
from vsand.disk.sharing import holder  # noqa: E402
from vsand.disk.pool import Pool  # noqa: E402
from vsand.disk.role import Role  # noqa: E402
from vsand.disk.recovery import used_slots  # noqa: E402
from vsand.errors import InvalidArgument, IOFailure, NoSpace  # noqa: E402
from vsand.mapping.lmap import ALLOCATED, SHARED, SP, SS, STATE_MASK  # noqa: E402
from vsand.units import MiB, Units  # noqa: E402

SEG = MiB
MAX_LDS = 6


# ---- helpers ------------------------------------------------------------------------
def new_pool(tmp: str, units: Units, ndrives: int = 8, size: int = 128 * MiB,
             drive_factory=None) -> tuple[Pool, list[str]]:
    paths = [os.path.join(tmp, f"d{i:02d}.img") for i in range(ndrives)]
    kw = {} if drive_factory is None else {"drive_factory": drive_factory}
    return Pool.create([(p, size, "default") for p in paths], units, **kw), paths


def pattern(seed: int, n: int) -> bytes:
    """Pseudo-random bytes without zeros (never mistaken for a hole)."""
    return np.random.default_rng(seed).integers(1, 256, size=n, dtype=np.uint8).tobytes()


def crash_reopen(pool: Pool, paths: list[str], drive_factory=None) -> Pool:
    """Flush, then drop the pool without close/checkpoint (kill -9) and recover."""
    pool.flush()
    for d in pool.drives.values():
        d.close()
    pool.closed = True
    return Pool.open(paths, drive_factory=drive_factory)


def first_diff(a: bytes, b: bytes) -> str:
    x, y = np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)
    if len(x) != len(y):
        return f"length {len(x)} != {len(y)}"
    d = np.flatnonzero(x != y)
    segs = sorted({int(i) // SEG for i in d})
    return (f"{len(d)} bytes differ, first at {int(d[0])} (got {int(x[d[0]])} want {int(y[d[0]])}); "
            f"segments {segs}")


def accounting_problems(pool: Pool) -> list[str]:
    """Slot and PSEG accounting (see the module docstring); [] when consistent."""
    out: list[str] = []
    tables = pool.space.tables
    # -- slots: LMAP references vs RSD tables --------------------------------------------
    nrefs: dict[tuple[int, str], int] = {}
    for ld in pool.lds_by_id.values():
        _, es = ld.l2.allocated()
        bad = es[(es & STATE_MASK) != ALLOCATED]
        if len(bad):
            out.append(f"LD {ld.name}: {len(bad)} entries in an unknown state")
        key = (ld.raid, ld.ldad)
        nrefs[key] = nrefs.get(key, 0) + int(np.count_nonzero((es & STATE_MASK) == ALLOCATED))
    pending: dict[tuple[int, str], dict[int, int]] = {}
    for t, i, s in pool.journal.slots:
        p = pending.setdefault((t.raid, t.ldad), {})
        p[i] = p.get(i, 0) | (1 << s)
    for t, idx, slot in getattr(pool.journal, "bulk_slots", []):
        p = pending.setdefault((t.raid, t.ldad), {})
        for i, s in zip(np.asarray(idx).tolist(), np.asarray(slot).tolist()):
            p[i] = p.get(i, 0) | (1 << s)
    masks = used_slots(pool)
    for key, t in tables.items():
        m = masks[key]
        live = t.live_indices()
        is_live = np.zeros(t.count, dtype=bool)
        is_live[live] = True
        dead_refs = np.flatnonzero((m != 0) & ~is_live)
        if len(dead_refs):
            out.append(f"RAID{key[0]}/{key[1]}: entries refer to dead RSDs {dead_refs[:5].tolist()}")
        used = 0
        for i in live.tolist():
            u = ~(t.free_slots.get(i, 0) | pending.get(key, {}).get(i, 0)) & 0xFF
            used += bin(u).count("1")
            if u != int(m[i]):
                out.append(f"RAID{key[0]}/{key[1]}#{i}: used slots {u:#04x} but referenced {int(m[i]):#04x}")
        referenced = int(sum(bin(int(x)).count("1") for x in m))
        if referenced != nrefs.get(key, 0):
            out.append(f"RAID{key[0]}/{key[1]}: {nrefs.get(key, 0)} allocated entries but only "
                       f"{referenced} distinct slots (a slot has two owners)")
        if used != nrefs.get(key, 0):
            out.append(f"RAID{key[0]}/{key[1]}: {used} used slots in the RSD table, "
                       f"{nrefs.get(key, 0)} referenced by LMAPs")
    # -- PSEGs: free maps vs live RStores + checkpoint + pending ---------------------------
    owned: list[tuple[int, int]] = []
    for t in tables.values():
        for i in t.live_indices().tolist():
            owned += pool.space.physical(t.raid, t.members(i))
    if pool.ckpt:
        for d, psegs in pool.ckpt["copies"]:
            owned += [(d, g) for g in psegs]
    owned += list(pool.allocator.pending)
    if len(set(owned)) != len(owned):
        out.append(f"{len(owned) - len(set(owned))} PSEGs owned twice")
    marked = {(i, int(g)) for i, ds in pool.allocator.drives.items() for g in np.flatnonzero(ds.used)}
    if marked != set(owned):
        out.append(f"PSEGs used in the free maps but owned by nothing: {sorted(marked - set(owned))[:5]}; "
                   f"owned but free: {sorted(set(owned) - marked)[:5]}")
    # -- snapshot reservation --------------------------------------------------------------
    if not any(ld.role.reserved for ld in pool.lds_by_id.values()) \
            and pool.space.reserve_segs:
        out.append(f"{pool.space.reserve_segs} segments still reserved with no reserved snapshot left")
    return out


# ---- 1. the state machine -------------------------------------------------------------
def ranges(size: int, one_segment: bool = False):
    """(offset, length) within an LD of ``size`` bytes: tiny unaligned, whole
    segments, crossing a segment boundary, anything up to 2 MiB; with
    ``one_segment`` only ranges inside one segment (whole ones included)."""
    nsegs = size // SEG
    if one_segment:
        return st.integers(0, nsegs - 1).flatmap(lambda k: st.one_of(
            st.just((k * SEG, SEG)),
            st.integers(0, SEG - 1).flatmap(
                lambda so: st.tuples(st.just(k * SEG + so), st.integers(1, SEG - so)))))
    small = st.integers(0, size - 1).flatmap(
        lambda off: st.tuples(st.just(off), st.integers(1, min(8192, size - off))))
    whole = st.integers(0, nsegs - 1).flatmap(
        lambda k: st.tuples(st.just(k * SEG), st.integers(1, min(2, nsegs - k)).map(lambda m: m * SEG)))

    def cross(k, a, b):
        off = max(0, k * SEG - a)
        return off, min(size, k * SEG + b) - off
    crossing = st.builds(cross, st.integers(1, nsegs - 1), st.integers(1, 300_000), st.integers(1, 300_000))
    anyr = st.integers(0, size - 1).flatmap(
        lambda off: st.tuples(st.just(off), st.integers(1, min(2 * MiB, size - off))))
    return st.one_of(whole, small, crossing, anyr)


FILLER = "filler"
TIGHT_DRIVE = 8 * MiB + 6 * 2 * MiB      # 6 PSEGs per drive: space runs out


class SnapshotMachine(RuleBasedStateMachine):
    """Random snapshot/CFW/delete sequences against a bytearray per LD (DESIGN.md §7).

    With ``tight`` the pool is small and a "filler" LUN (only touched by the fill
    rules) eats what is left, so copies on first write run out of space: I/O then
    stays inside one segment (a request that fails with ENOSPC changes nothing), an
    on-demand snapshot may be invalidated (from then on it fails reads and writes
    and can only be deleted), a reserved one never is, and a write to a segment an
    LD without a successor already has allocated never fails."""

    @initialize(small_log=st.booleans(), lmap_segments=st.sampled_from([2048, 4, 2]),
                tight=st.booleans(), first_raid=st.sampled_from([0, 1, 5]), first_mib=st.integers(2, 8))
    def setup(self, small_log, lmap_segments, tight, first_raid, first_mib):
        self.tmp = tempfile.mkdtemp(prefix="vsand-snapmodel-")
        self.small_log = small_log
        self.tight = tight
        self.faults = self._new_faults()   # every pool's drives: the commit fault rule arms them
        self.syncs = SyncWatch()
        pool, self.paths = self._create_pool(Units(quorum=8 * MiB, lmap_segments=lmap_segments),
                                             TIGHT_DRIVE if tight else 128 * MiB)
        self._set_pool(pool)
        self.model: dict[str, bytearray] = {}
        self.chains: list[list[str]] = []      # chains of 2+ LDs, oldest first
        self.reserved: set[str] = set()
        self.invalid: set[str] = set()
        self.origin: dict[str, str] = {}       # snapshot -> the LD it names as its origin
        self.seed = 0
        self.nid = 0
        self.create(first_raid, first_mib)

    def teardown(self):
        pool = getattr(self, "pool", None)
        try:
            if pool is not None and not pool.closed:
                pool.close()
        finally:
            if getattr(self, "tmp", None):
                shutil.rmtree(self.tmp, ignore_errors=True)

    def _set_pool(self, pool: Pool) -> None:
        if self.small_log:   # LogFull and checkpoint-at-half in commits and write intents
            pool.meta.log_size = min(pool.meta.log_size, max(pool.meta.log_off + 4096, 12 * 1024))
        self.syncs.watch(pool)
        self.faults.calls.clear()
        self.pool = pool

    def _open(self) -> Pool:
        return Pool.open(self.paths, drive_factory=self.faults.open)

    # Where the drives live: image files under self.tmp. tests/rados/test_rados_model.py
    # overrides these two to run the same machine on objects of a RADOS pool.
    def _new_faults(self) -> Faults:
        return Faults()

    def _create_pool(self, units: Units, size: int) -> tuple[Pool, list[str]]:
        return new_pool(self.tmp, units, size=size, drive_factory=self.faults.open)

    def _data(self, n: int) -> bytes:
        self.seed += 1
        return pattern(self.seed, n)

    def _names(self, usable: bool = False) -> list[str]:
        return sorted(n for n in self.model if n != FILLER and not (usable and n in self.invalid))

    def _pick(self, data, usable: bool = False) -> str:
        return data.draw(st.sampled_from(self._names(usable)), label="ld")

    def _new_name(self) -> str:
        self.nid += 1
        return f"ld{self.nid}"

    def _chain_of(self, name: str) -> list[str] | None:
        for c in self.chains:
            if name in c:
                return c
        return None

    def _nospace_ok(self, name: str, off: int, n: int) -> None:
        """ENOSPC is legal only in the tight pool, and never for a segment that an LD
        without a successor (no copy for itself to make) already has allocated."""
        assert self.tight, "ENOSPC in a pool with plenty of space"
        ld = self.pool.get(name)
        if ld.succ is None:
            k = off // SEG
            assert not ld.l2.get(k) & ALLOCATED, \
                f"{name}: I/O to its own allocated segment {k} failed for lack of space"

    # -- LD lifecycle -------------------------------------------------------------------
    @precondition(lambda self: len(self._names()) < MAX_LDS)
    @rule(raid=st.sampled_from([0, 1, 5]), mib=st.integers(2, 8))
    def create(self, raid, mib):
        name = self._new_name()
        try:
            self.pool.create_ld(name, mib * MiB, raid=raid)
        except NoSpace:
            assert self.tight and name not in self.pool.lds
            return
        self.model[name] = bytearray(mib * MiB)

    # Snapshots and I/O are what this machine is about. Hypothesis sorts rules by
    # argument count, then name, and leans towards the first ones: these take one
    # argument and are named to sort first; two snapshot rules survive its random
    # disabling of rules ("swarm testing") more often than one.
    @precondition(lambda self: self._names() and len(self._names()) < MAX_LDS)
    @rule(data=st.data())
    def a_snapshot(self, data):
        self._snapshot(data)

    @precondition(lambda self: self._names() and len(self._names()) < MAX_LDS)
    @rule(data=st.data())
    def a_snapshot_again(self, data):
        self._snapshot(data)

    def _snapshot(self, data):
        reserve = data.draw(st.sampled_from([False, False, True]), label="reserve")
        src = self._pick(data)
        name = self._new_name()
        if src in self.invalid:
            with pytest.raises(InvalidArgument):
                self.pool.snapshot(src, name, reserve=reserve)
            return
        try:
            snap = self.pool.snapshot(src, name, reserve=reserve)
        except NoSpace:
            assert reserve or self.tight, "an on-demand snapshot needs no space"
            assert name not in self.pool.lds
            return
        assert snap.name == name and snap.size == len(self.model[src])
        self.model[name] = bytearray(self.model[src])
        c = self._chain_of(src)
        if c is None:
            c = [src]
            self.chains.append(c)
        c.insert(c.index(src), name)       # the new snapshot is src's predecessor
        self.origin[name] = src
        if reserve:
            self.reserved.add(name)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data):
        name = data.draw(st.sampled_from(sorted(self.model)), label="ld")
        excl, freed = delete_measured(self.pool, name)
        assert freed == excl, f"deleting {name} freed {freed} segments, its exclusive said {excl}"
        del self.model[name]
        self.reserved.discard(name)
        self.invalid.discard(name)
        self.origin.pop(name, None)
        self.origin = {k: v for k, v in self.origin.items() if v != name}    # origin gone
        c = self._chain_of(name)
        if c is not None:
            c.remove(name)
            if len(c) < 2:
                self.chains.remove(c)

    def _revert_pairs(self) -> list[tuple[str, str]]:
        """(LUN, snapshot of its chain) pairs a revert accepts."""
        get = self.pool.get
        return [(x, s) for c in self.chains for x in c for s in c
                if x != s and get(x).role is Role.LUN and get(s).role.snapshot
                and s not in self.invalid]

    @precondition(lambda self: self.chains)
    @rule(data=st.data())
    def revert(self, data):
        """The LUN reads like the snapshot; with ``keep`` its bytes before are a new
        snapshot standing where it stood; every other LD reads as before."""
        pairs = self._revert_pairs()
        if not pairs:
            return
        x, s = data.draw(st.sampled_from(pairs), label="revert")
        keep = len(self._names()) < MAX_LDS and data.draw(st.booleans(), label="keep")
        kname = self._new_name() if keep else None
        try:
            self.pool.revert(x, s, kname)
        except NoSpace:
            assert self.tight and (keep or self.pool.get(s).role.reserved), "revert needs no space"
            assert kname not in self.pool.lds
            return
        event(f"revert keep={keep}")
        c = self._chain_of(x)
        i = c.index(x)
        if keep:
            c[i] = kname
            self.model[kname] = self.model[x]
            self.origin[kname] = x
        else:
            c.remove(x)
        c.insert(c.index(s) + 1, x)
        self.model[x] = bytearray(self.model[s])

    @precondition(lambda self: self._names())
    @rule(data=st.data())
    def rename(self, data):
        """A rename changes nothing but names: bytes, chains and roles stay; the
        origins that named it follow (all of it durable: see restart)."""
        name = self._pick(data)
        new = self._new_name()
        self.pool.rename_ld(name, new)
        self.model[new] = self.model.pop(name)
        for group in (self.reserved, self.invalid):
            if name in group:
                group.discard(name)
                group.add(new)
        c = self._chain_of(name)
        if c is not None:
            c[c.index(name)] = new
        self.origin = {(new if k == name else k): (new if v == name else v) for k, v in self.origin.items()}

    @precondition(lambda self: self._names(usable=True))
    @rule(data=st.data(), delta=st.sampled_from([-2, -1, 1, 2]))
    def resize(self, data, delta):
        name = self._pick(data, usable=True)
        m = self.model[name]
        new = min(max(len(m) + delta * MiB, 2 * MiB), 10 * MiB)
        if self._chain_of(name) is not None:
            with pytest.raises(InvalidArgument):
                self.pool.resize_ld(name, new)
            return
        try:
            self.pool.resize_ld(name, new)
        except NoSpace:
            assert self.tight and self.pool.get(name).size == len(m)
            return
        if new < len(m):
            del m[new:]
        else:
            m.extend(bytes(new - len(m)))

    @precondition(lambda self: self.tight)
    @rule(nsegs=st.integers(1, 64))
    def a_fill(self, nsegs):
        """Writes whole segments of the filler LUN until ENOSPC or ``nsegs`` are done."""
        if FILLER not in self.model:
            try:
                self.pool.create_ld(FILLER, 64 * MiB, raid=0)
            except NoSpace:
                return
            self.model[FILLER] = bytearray(64 * MiB)
        ld, m = self.pool.get(FILLER), self.model[FILLER]
        holes = [k for k in range(ld.size // SEG) if not ld.l2.get(k) & ALLOCATED]
        for k in holes[:nsegs]:
            buf = self._data(SEG)
            try:
                ld.write(k * SEG, buf)
            except NoSpace:
                break
            m[k * SEG:(k + 1) * SEG] = buf

    @precondition(lambda self: FILLER in self.model)
    @rule(data=st.data())
    def unfill(self, data):
        ld, m = self.pool.get(FILLER), self.model[FILLER]
        k = data.draw(st.integers(0, ld.size // SEG - 1), label="segment")
        n = data.draw(st.integers(1, ld.size // SEG - k), label="segments")
        ld.trim(k * SEG, n * SEG)
        m[k * SEG:(k + n) * SEG] = bytes(n * SEG)

    # -- I/O ("blk_" sorts first: hypothesis leans towards the first rules) -------------
    def _write(self, data):
        name = self._pick(data, usable=True)
        off, n = data.draw(ranges(len(self.model[name]), self.tight), label="range")
        buf = self._data(n)
        try:
            self.pool.get(name).write(off, buf)
        except NoSpace:
            self._nospace_ok(name, off, n)
            return
        self.model[name][off:off + n] = buf

    @precondition(lambda self: self._names(usable=True))
    @rule(data=st.data())
    def blk_write(self, data):
        self._write(data)

    @precondition(lambda self: self._names(usable=True))
    @rule(data=st.data())
    def blk_write_more(self, data):
        self._write(data)

    @precondition(lambda self: self._names(usable=True))
    @rule(data=st.data())
    def blk_zero(self, data):
        how = data.draw(st.sampled_from(["trim", "zeroes", "zeroes_no_trim"]), label="how")
        name = self._pick(data, usable=True)
        off, n = data.draw(ranges(len(self.model[name]), self.tight), label="range")
        ld = self.pool.get(name)
        try:
            if how == "trim":
                ld.trim(off, n)
            else:
                ld.write_zeroes(off, n, may_trim=how == "zeroes")
        except NoSpace:
            self._nospace_ok(name, off, n)
            return
        self.model[name][off:off + n] = bytes(n)
        if how == "zeroes_no_trim":   # NO_HOLE: every segment of the range stays allocated
            for k in range(off // SEG, -(-(off + n) // SEG)):
                assert ld.l2.get(k) & ALLOCATED, f"{name} segment {k} unmapped by write_zeroes(may_trim=False)"

    @precondition(lambda self: self.invalid)
    @rule(data=st.data())
    def blk_invalid_io(self, data):
        """An invalidated snapshot fails every read and write."""
        ld = self.pool.get(data.draw(st.sampled_from(sorted(self.invalid)), label="ld"))
        with pytest.raises(IOFailure):
            ld.read(0, 4096)
        with pytest.raises(IOFailure):
            ld.write(0, b"x")
        with pytest.raises(IOFailure):
            ld.trim(0, SEG)

    @rule(how=st.sampled_from(["flush", "checkpoint"]), twice=st.booleans())
    def commit(self, how, twice):
        """A second commit returns the PSEGs of RStores the first one dropped."""
        for _ in range(1 + twice):
            self.pool.flush() if how == "flush" else self.pool.checkpoint()

    @rule(crash=st.booleans(), checkpoint_first=st.booleans())
    def restart(self, crash, checkpoint_first):
        """Clean shutdown and start-up, or kill -9 after a flush (recovery replays the
        log, or nothing when a checkpoint came last)."""
        if crash:
            if checkpoint_first:
                self.pool.checkpoint()
            self._set_pool(crash_reopen(self.pool, self.paths, self.faults.open))
        else:
            self.pool.close()
            self._set_pool(self._open())

    # -- commit failures (DESIGN.md §9; commit_faults.py) ----------------------------------
    @rule(data=st.data())
    def commit_fails(self, data):
        """One metadata I/O of a quorum drive fails (EIO) under an operation that
        commits: what returned is done, what raised IOFailure is not, the pool stays
        writable, and a kill -9 right after finds the same pool. Sometimes instead every
        write to one quorum drive fails: the pool turns read-only and a restart
        without the fault checks it and finds what was flushed before."""
        self.faults.calls.clear()
        if data.draw(PERSISTENT, label="persistent"):
            self._commit_fails_persistent(data)
            return
        room = len(self._names()) < MAX_LDS
        usable = self._names(usable=True)
        mirrored = [n for n in usable if self.pool.get(n).raid != 0]
        ops = ["flush", "checkpoint"] + ["create"] * room + ["write"] * bool(mirrored) \
            + ["resize"] * bool(usable) + ["delete"] * bool(self.model) + ["snapshot"] * (room and bool(usable)) \
            + ["revert"] * bool(self._revert_pairs())
        op = data.draw(st.sampled_from(ops), label="op")
        if op == "write":
            self.pool.checkpoint()       # no RStore is marked dirty: the write needs an intent

        def run():
            if op in ("flush", "checkpoint"):
                self.commit(op, False)
            elif op == "create":
                self.create(data.draw(st.sampled_from([0, 1, 5]), label="raid"),
                            data.draw(st.integers(2, 8), label="mib"))
            elif op == "write":
                name = data.draw(st.sampled_from(mirrored), label="ld")
                off, n = data.draw(ranges(len(self.model[name]), one_segment=True), label="range")
                buf = self._data(n)
                try:
                    self.pool.get(name).write(off, buf)
                except NoSpace:
                    self._nospace_ok(name, off, n)
                else:
                    self.model[name][off:off + n] = buf
            elif op == "resize":
                self.resize(data, data.draw(st.sampled_from([-2, -1, 1, 2]), label="delta"))
            elif op == "delete":
                self.delete(data)
            elif op == "revert":
                self.revert(data)
            else:
                self._snapshot(data)
        run_one_shot(self, data, op, run, catalog=op in ("create", "resize", "delete", "snapshot", "revert"),
                     writes_data=op == "write")
        self.same_bytes_and_chains()
        self.structure()
        # kill -9 now (commit_faults.kill_now)
        self._set_pool(kill_now(self.pool, self.paths, self.faults))

    def _commit_fails_persistent(self, data):
        self.pool.flush()                # what is durable is the model
        drive = data.draw(st.sampled_from(sorted(self.pool.quorum_ids)), label="quorum drive")
        arm_persistent(self.faults, self.pool, drive, data.draw(st.booleans(), label="blobs too"))
        ops = ["create", "setting"]
        if self.model:
            ops.append("delete")
        if self._names(usable=True) and len(self._names()) < MAX_LDS:
            ops.append("snapshot")
        op = data.draw(st.sampled_from(ops), label="op")
        op = refused_read_only(op, {
            "create": lambda: self.pool.create_ld(self._new_name(), 2 * MiB,
                                                  raid=data.draw(st.sampled_from([0, 1, 5]))),
            "delete": lambda: self.pool.delete_ld(data.draw(st.sampled_from(sorted(self.model)), label="ld")),
            "snapshot": lambda: self.pool.snapshot(self._pick(data, usable=True), self._new_name()),
            "setting": lambda: self.pool.set_setting("model-probe", self.nid),
        }, "setting", self.tight)
        event(f"commit fault: persistent, {op}")
        assert_read_only(self.pool, self._names(usable=True), self._new_name())
        # Reads go on. (No structure check here: the blobs of the failed rewrites stay
        # allocated until the restart, in case a superblock copy names them.)
        self.same_bytes_and_chains()
        self._set_pool(reopen_after_read_only(self.pool, self.paths, self.faults,
                                              data.draw(st.booleans(), label="clean close")))
        assert sorted(self.pool.lds) == sorted(self.model), \
            f"after the read-only run: LDs {sorted(self.pool.lds)} != model {sorted(self.model)} " \
            f"(the {op} that failed with PoolReadOnly)"
        assert "model-probe" not in self.pool.settings, "a setting that failed with PoolReadOnly came back"
        self.same_bytes_and_chains()
        self.structure()
        if self._names(usable=True):     # writable again
            self._write(data)
            self.pool.flush()

    # -- after every step ---------------------------------------------------------------
    @invariant()
    def same_bytes_and_chains(self):
        if not hasattr(self, "pool"):
            return
        pool = self.pool
        assert sorted(pool.lds) == sorted(self.model), f"LDs {sorted(pool.lds)} != {sorted(self.model)}"
        # An LD invalidated since the last step has left its chain like a delete
        # (ops.inv): so it does in the model, before any chain is compared.
        for name in self.model:
            if pool.get(name).invalid and name not in self.invalid:
                c = self._chain_of(name)
                if c is not None:
                    c.remove(name)
                    if len(c) < 2:
                        self.chains.remove(c)
        for name, want in self.model.items():
            ld = pool.get(name)
            if ld.invalid and name not in self.invalid:
                assert self.tight, f"{name} was invalidated in a pool with plenty of space"
                assert ld.info().get("space") == "on-demand", \
                    f"{name} ({ld.attrs.get('was')}) was invalidated"
                assert ld.info().get("invalid") is True
                self.invalid.add(name)
            assert ld.invalid == (name in self.invalid), f"{name}: invalid flag went away"
            if ld.invalid:
                with pytest.raises(IOFailure):
                    ld.read(0, ld.size)
            else:
                got = ld.read(0, ld.size)
                if got != want:
                    raise AssertionError(f"LD {name} (RAID{ld.raid}, chain {[x.name for x in pool.chain(name)]}): "
                                         f"{first_diff(got, bytes(want))}")
            assert not (ld.pred is None and ld.l2.fill & SP), f"{name}: fill has Sp without a predecessor"
            assert not (ld.succ is None and ld.l2.fill & SS), f"{name}: fill has Ss without a successor"
            c = self._chain_of(name) or [name]
            assert [x.name for x in pool.chain(name)] == c
            assert (ld.role.reserved) == (name in self.reserved)
            assert ld.attrs.get("snapshot_of") == self.origin.get(name), (name, ld.attrs)

    @invariant()
    def diffs_are_safe(self):
        if hasattr(self, "pool"):
            check_diffs(self.pool, self.model, self._names())

    @invariant()
    def structure(self):
        if not hasattr(self, "pool"):
            return
        problems = check_pool(self.pool)
        problems += check_invariants(self.pool)
        problems += accounting_problems(self.pool)
        problems += usage_problems(self.pool)
        problems += backing_problems(self.pool)
        assert not problems, "pool invariants violated:\n  " + "\n  ".join(problems)


def check_diffs(pool: Pool, model: dict[str, bytearray], names: list[str]) -> None:
    """Changed-block diffs (disk/diff.py) are a safe superset: for every pair of
    valid LDs of one chain, a segment not reported holds the same model bytes in
    both, one that both read from the same entry (found by ``holder``, a segment at
    a time) is never reported, and the order of the two does not matter. Alone, an
    LD's unreported segments are zeros in the model and its allocated ones are
    reported. LDs of different chains are refused."""
    names = [n for n in names if not pool.get(n).invalid]
    for name in names:
        ld = pool.get(name)
        got = _diff_segments(ld, None)
        data = _words(model[name], ld.l2.nsegs).any(axis=1)
        for k in range(ld.l2.nsegs):
            if k not in got:
                assert not data[k], f"{name}: segment {k} holds data, not reported"
            assert (k in got) == bool(holder(ld, k)[1] & STATE_MASK), f"{name}: segment {k}"
    heads = {}
    for name in names:
        chain = [x.name for x in pool.chain(name)]
        heads.setdefault(chain[0], chain)
    for chain in heads.values():
        lds = [pool.get(n) for n in chain if n in names]
        for i, a in enumerate(lds):
            for b in lds[i + 1:]:
                got = _diff_segments(a, b)
                assert got == _diff_segments(b, a), f"diff({a.name}, {b.name}) depends on the order"
                n = min(a.l2.nsegs, b.l2.nsegs)
                same = ~(_words(model[a.name], n) != _words(model[b.name], n)).any(axis=1)
                for k in range(n):
                    if k not in got:
                        assert same[k], f"segment {k} differs between {a.name} and {b.name}, not reported"
                    elif holder(a, k)[1] & ~SHARED == holder(b, k)[1] & ~SHARED:
                        raise AssertionError(f"segment {k}: {a.name} and {b.name} read one entry, reported")
    if len(heads) > 1:
        x, y = (pool.get(c[-1]) for c in list(heads.values())[:2])
        with pytest.raises(InvalidArgument, match="not in one sharing chain"):
            diff.diff_extents(x, y)


def _words(m: bytearray, nsegs: int) -> np.ndarray:
    """The first ``nsegs`` segments of a model, one row of 64-bit words each (a view)."""
    return np.frombuffer(m, dtype=np.uint64, count=nsegs * SEG // 8).reshape(nsegs, SEG // 8)


def _diff_segments(newer, older) -> set[int]:
    out = set()
    for off, n in diff.diff_extents(newer, older):
        out.update(range(off // SEG, (off + n) // SEG))
    return out


SnapshotMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("VSAND_SNAP_EXAMPLES", "40")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestSnapshotModel = SnapshotMachine.TestCase


# ---- 2. reserve vs on-demand space --------------------------------------------------------
TINY = Units(quorum=8 * MiB)


def fill_pool(ld, start: int = 0) -> int:
    """Writes whole segments of ``ld`` from ``start`` until NoSpace; returns how many fit."""
    k = start
    try:
        while k < ld.size // SEG:
            ld.write(k * SEG, pattern(50_000 + k, SEG))
            k += 1
    except NoSpace:
        return k - start
    raise AssertionError("the filler LD never ran out of space: make it bigger")


def test_on_demand_snapshot_invalidated_when_space_runs_out(tmp_path):
    """An on-demand snapshot whose copy on first write cannot get space is invalidated
    (reads raise IOFailure, info says invalid, it leaves its chain and gives its space
    back at once, it can only be deleted) while the LUN write succeeds; other snapshots stay valid."""
    pool, paths = new_pool(str(tmp_path), TINY, size=8 * MiB + 12 * 2 * MiB)
    lun = pool.create_ld("lun", 4 * MiB, raid=0)
    orig = pattern(1, 4 * MiB)
    lun.write(0, orig)
    snap = pool.snapshot("lun", "snap")
    assert snap.info()["space"] == "on-demand"
    # One CFW while there is room: the snapshot now owns the old segment 0.
    new0 = pattern(2, SEG)
    lun.write(0, new0)
    assert snap.read(0, 4 * MiB) == orig
    filler = pool.create_ld("filler", 200 * MiB, raid=0)
    filled = fill_pool(filler)
    assert filled > 0
    pool.flush()
    # No space left: the partial write to segment 1 needs a copy for the snapshot.
    lun.write(SEG + 10, b"lun wins")
    assert snap.invalid and snap.info()["invalid"] is True
    with pytest.raises(IOFailure):
        snap.read(0, 512)
    with pytest.raises(IOFailure):
        snap.write(0, b"x")
    with pytest.raises(InvalidArgument):
        pool.snapshot("snap", "snap2")
    want = bytearray(orig)
    want[:SEG] = new0
    want[SEG + 10:SEG + 18] = b"lun wins"
    # More writes to the LUN, whole and partial, keep succeeding.
    lun.write(2 * SEG, pattern(3, SEG))
    want[2 * SEG:3 * SEG] = pattern(3, SEG)
    lun.write(3 * SEG + 5, b"abc")
    want[3 * SEG + 5:3 * SEG + 8] = b"abc"
    assert lun.read(0, 4 * MiB) == want
    assert check_pool(pool) == [] and accounting_problems(pool) == []
    # The invalid state is durable (clean and crash restarts).
    pool.close()
    pool = Pool.open(paths)
    assert pool.get("snap").invalid
    with pytest.raises(IOFailure):
        pool.get("snap").read(0, 512)
    assert pool.get("lun").read(0, 4 * MiB) == want
    pool = crash_reopen(pool, paths)
    assert pool.get("snap").invalid and pool.get("lun").read(0, 4 * MiB) == want
    # Invalidation took the snapshot out of its chain and freed what it owned (the
    # old segment 0) at once: it holds nothing, and nothing is handed to it later.
    snap = pool.get("snap")
    assert snap.allocated_segments() == 0 and snap.pred is None and snap.succ is None
    assert pool.get("lun").pred is None
    owned = 1
    pool.delete_ld("snap")
    assert "snap" not in pool.lds and pool.get("lun").pred is None
    pool.flush()
    # The filler can use the space the snapshot had.
    assert fill_pool(pool.get("filler"), filled) >= owned
    assert pool.get("lun").read(0, 4 * MiB) == want
    assert check_pool(pool) == [] and accounting_problems(pool) == []
    pool.close()


def test_reserved_snapshot_fails_without_room_and_is_never_invalidated(tmp_path):
    """``reserve=True`` fails with NoSpace (nothing created) when the pool cannot
    hold a full copy; once created, LUN writes never invalidate it, even with the
    rest of the pool full, and its reservation is given back when it is deleted."""
    pool, paths = new_pool(str(tmp_path), TINY, size=8 * MiB + 12 * 2 * MiB)
    big = pool.create_ld("big", 200 * MiB, raid=0)       # a full copy: 100 PSEGs of 96
    with pytest.raises(NoSpace):
        pool.snapshot("big", "bigsnap", reserve=True)
    assert "bigsnap" not in pool.lds and big.pred is None
    assert pool.space.reserve_segs == 0
    pool.delete_ld("big")

    lun = pool.create_ld("lun", 8 * MiB, raid=5)
    orig = pattern(10, 8 * MiB)
    lun.write(0, orig)
    snap = pool.snapshot("lun", "snap", reserve=True)
    assert snap.info()["space"] == "reserve"
    od = pool.snapshot("lun", "od")          # on demand, newer than snap
    filler = pool.create_ld("filler", 200 * MiB, raid=0)
    fill_pool(filler)
    pool.flush()
    # Overwrite every segment of the LUN, whole and partial: the reservation pays.
    want = bytearray(orig)
    for k in range(8):
        if k % 2:
            buf = pattern(100 + k, SEG)
            lun.write(k * SEG, buf)
            want[k * SEG:(k + 1) * SEG] = buf
        else:
            lun.write(k * SEG + 333, b"partial")
            want[k * SEG + 333:k * SEG + 340] = b"partial"
    assert lun.read(0, 8 * MiB) == want
    # od sits between snap and the LUN: the copies go to od, paid by snap's reservation.
    assert not snap.invalid and not od.invalid
    assert snap.read(0, 8 * MiB) == orig and od.read(0, 8 * MiB) == orig
    assert check_pool(pool) == [] and accounting_problems(pool) == []
    pool = crash_reopen(pool, paths)
    assert pool.get("snap").read(0, 8 * MiB) == orig
    assert pool.get("lun").read(0, 8 * MiB) == want
    pool.close()
    pool = Pool.open(paths)
    assert pool.get("snap").read(0, 8 * MiB) == orig
    for name in ("od", "snap"):
        pool.delete_ld(name)
    assert pool.space.reserve_segs == 0
    assert pool.get("lun").read(0, 8 * MiB) == want
    assert check_pool(pool) == [] and accounting_problems(pool) == []
    pool.close()


def test_reservation_given_back_after_writes_to_the_snapshot(tmp_path):
    """Writes into a reserved snapshot itself (rule 1 copies and new allocations) and
    trims of it must not leave part of its reservation behind once it is deleted."""
    pool, paths = new_pool(str(tmp_path), TINY)
    lun = pool.create_ld("lun", 4 * MiB, raid=1)
    lun.write(0, pattern(1, 2 * MiB))
    snap = pool.snapshot("lun", "snap", reserve=True)
    snap.write(10, b"own copy")              # partial write of a shared, allocated segment
    snap.write(3 * SEG, pattern(2, SEG))     # whole write of a shared, unallocated segment
    lun.write(SEG, pattern(3, SEG))          # CFW: the snapshot receives the old segment 1
    snap.trim(0, SEG)                        # the snapshot frees its own copy again
    pool.delete_ld("snap")
    assert pool.space.reserve_segs == 0
    assert check_pool(pool) == [] and accounting_problems(pool) == []
    pool.close()


@pytest.mark.parametrize("lun_raid,filler_raid", [(1, 0), (1, 5), (5, 0), (0, 1)])
def test_reservation_holds_whatever_raid_type_fills_the_pool(tmp_path, lun_raid, filler_raid):
    """The reservation is counted in the reserved snapshot's RAID type: a RAID1 copy
    needs 8 PSEGs per RStore even when a RAID0/RAID5 LUN is what fills the pool."""
    pool, paths = new_pool(str(tmp_path), TINY, size=8 * MiB + 12 * 2 * MiB)
    lun = pool.create_ld("lun", 8 * MiB, raid=lun_raid)
    orig = pattern(10, 8 * MiB)
    lun.write(0, orig)
    snap = pool.snapshot("lun", "snap", reserve=True)
    fill_pool(pool.create_ld("filler", 200 * MiB, raid=filler_raid))
    for k in range(8):
        lun.write(k * SEG + 5, b"x")
    assert not snap.invalid
    assert snap.read(0, 8 * MiB) == orig
    assert check_pool(pool) == [] and accounting_problems(pool) == []
    pool.close()
