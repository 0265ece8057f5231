"""Model checks of the storage engine (DESIGN.md §§7, 9, 12).

1. ``EngineMachine``: a hypothesis state machine drives random create (RAID0/1/5,
   thin or thick, 1-16 MiB) / write (unaligned, segment-crossing, whole-segment,
   stripe-unit aligned) / trim / write_zeroes / slot recycling / resize / delete /
   flush / checkpoint / clean restart / crash restart (flushed: nothing may be
   lost; unflushed: each segment holds some content it had since the last commit)
   on several LDs, and compares every LD byte for byte with a bytearray model after
   every step, plus the structural invariants of ``engine_invariants`` (map -> RSD
   references, single owner, no PSEG leak). Examples vary the LMAP size (many LMAPs
   per small LD) and shrink the metadata log (LogFull / checkpoint paths).
2. A deleted LUN's bytes never show up in a later LUN (slot reuse inside a live
   RStore, PSEG reuse after a whole RStore is dropped, thick allocation), also
   after clean and crash restarts.
3. A full pool answers ENOSPC without damaging data; out-of-range I/O and
   impossible sizes raise the typed errors and leave the disk as it was.
4. ENOSPC because free PSEGs cannot be placed (too few drives with room) leaves
   no half-created thick LD behind.

``VSAND_MODEL_EXAMPLES`` overrides the state machine's example count (default 50)
for longer bug hunts.
"""

from __future__ import annotations

import errno
import hashlib
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
    reopen_after_read_only,
    run_one_shot,
)
from engine_invariants import assert_invariants  # noqa: E402

from vsand.disk.check import check_pool  # noqa: E402
from vsand.disk.pool import Pool  # noqa: E402
from vsand.errors import Exists, InvalidArgument, NoSpace, NotFound, OutOfRange, PoolReadOnly  # noqa: E402
from vsand.mapping.lmap import entry_rsd  # noqa: E402
from vsand.units import MiB, Units  # noqa: E402

UNITS = Units(quorum=8 * MiB)
SEG = UNITS.segment
SU = UNITS.stripe_unit
NAMES = ("a", "b", "c", "d")
MAX_MIB = 20


# ---- helpers ------------------------------------------------------------------------
def make_pool(tmp: str, ndrives: int = 8, size: int = 160 * MiB,
              units: Units = UNITS, drive_factory=None) -> tuple[Pool, list[str]]:
    paths = [os.path.join(tmp, f"d{i}.img") for i in range(ndrives)]
    kw = {} if drive_factory is None else {"drive_factory": drive_factory}
    pool = Pool.create([(p, size, "default") for p in paths], units, **kw)
    return pool, paths


def pattern(seed: int, n: int) -> bytes:
    """Pseudo-random bytes with no long zero runs (so zeros are never mistaken for data)."""
    b = np.random.default_rng(seed).integers(1, 256, size=n, dtype=np.uint8)
    return b.tobytes()


def crash_reopen(pool: Pool, paths: list[str], drive_factory=None) -> Pool:
    """Flush (so the contract says everything is durable), then abandon the pool
    object without close/checkpoint and recover from what is on disk."""
    pool.flush()
    for d in pool.drives.values():
        d.close()
    pool.closed = True  # the abandoned object must not checkpoint if someone closes it
    return Pool.open(paths, drive_factory=drive_factory)


def clean_reopen(pool: Pool, paths: list[str]) -> Pool:
    pool.close()
    return Pool.open(paths)


def seg_hash(b) -> bytes:
    return hashlib.blake2b(b, digest_size=16).digest()


def first_diff(a: bytes, b: bytes) -> str:
    x = np.frombuffer(a, np.uint8)
    y = np.frombuffer(b, np.uint8)
    if len(x) != len(y):
        return f"length {len(x)} != {len(y)}"
    d = np.flatnonzero(x != y)
    segs = sorted({int(i) // SEG for i in d})
    return (f"{len(d)} bytes differ, first at {int(d[0])} (segment {int(d[0]) // SEG}, "
            f"got {int(x[d[0]])} want {int(y[d[0]])}); segments {segs[:20]}")


def assert_same(pool: Pool, model: dict[str, bytearray], where: str = "") -> None:
    assert sorted(pool.lds) == sorted(model), f"{where}: LDs {sorted(pool.lds)} != model {sorted(model)}"
    for name, want in model.items():
        ld = pool.get(name)
        assert ld.size == len(want), f"{where}: {name} size {ld.size} != {len(want)}"
        if ld.size <= 32 * MiB:
            got = ld.read(0, ld.size)
            if got != want:
                raise AssertionError(f"{where}: LD {name} (RAID{ld.raid}): {first_diff(got, bytes(want))}")
            continue
        mv = memoryview(want)
        for off in range(0, ld.size, 32 * MiB):  # big LDs in pieces: bounded memory
            n = min(32 * MiB, ld.size - off)
            got = ld.read(off, n)
            if got != mv[off:off + n]:
                raise AssertionError(f"{where}: LD {name} (RAID{ld.raid}) at +{off}: "
                                     f"{first_diff(got, bytes(mv[off:off + n]))}")


def ld_psegs(pool: Pool, ld) -> set[tuple[int, int]]:
    """Physical PSEGs of the RStores ``ld``'s allocated segments live in."""
    _, es = ld.l2.allocated()
    out = set()
    for idx in {entry_rsd(int(e)) for e in es.tolist()}:
        out.update(pool.space.physical(ld.raid, ld.table.members(idx)))
    return out


# ---- 1. the state machine -------------------------------------------------------------
def ranges(size: int):
    """(offset, length) strategies within an LD of ``size`` bytes: tiny unaligned,
    segment-crossing, whole segments, stripe-unit aligned, anything up to 3 MiB."""
    nsegs = size // SEG
    small = st.integers(0, size - 1).flatmap(
        lambda off: st.tuples(st.just(off), st.integers(1, min(8192, size - off))))
    whole = st.integers(0, nsegs - 1).flatmap(
        lambda k: st.tuples(st.just(k * SEG), st.integers(1, min(3, nsegs - k)).map(lambda m: m * SEG)))
    units = size // SU
    aligned = st.integers(0, units - 1).flatmap(
        lambda u: st.tuples(st.just(u * SU), st.integers(1, min(6, units - u)).map(lambda m: m * SU)))
    anyr = st.integers(0, size - 1).flatmap(
        lambda off: st.tuples(st.just(off), st.integers(0, min(3 * MiB, size - off))))
    choices = [small, whole, aligned, anyr]
    if nsegs > 1:
        def cross(k, a, b):
            off = max(0, k * SEG - a)
            return off, min(size, k * SEG + b) - off
        choices.append(st.builds(cross, st.integers(1, nsegs - 1), st.integers(1, 300_000),
                                 st.integers(1, 300_000)))
    return st.one_of(choices)


class EngineMachine(RuleBasedStateMachine):
    """Random engine operations against a bytearray per LD (DESIGN.md §7).

    Besides the exact model, ``versions`` remembers (as hashes) every content a
    segment had since the last commit (flush, checkpoint, create/delete/resize,
    close): after a crash *without* flush each segment must read as one of them
    (unflushed writes may be lost, but never corrupt anything else)."""

    @initialize(small_log=st.booleans(), lmap_segments=st.sampled_from([2048, 4, 2]))
    def setup(self, small_log, lmap_segments):
        self.tmp = tempfile.mkdtemp(prefix="vsand-model-")
        # A tiny metadata log makes commits hit LogFull and the checkpoint-at-half
        # path (in flush and in the write intent of a RAID1/5 write) within a few steps.
        self.small_log = small_log
        # LMAPs of 2-4 segments (a pool-creation setting) make small LDs span many
        # LMAPs: L2MAP growth/shrink and whole-LMAP log records get exercised.
        units = Units(quorum=8 * MiB, lmap_segments=lmap_segments)
        self.faults = Faults()         # every pool's drives: the commit fault rule arms them
        self.syncs = SyncWatch()
        pool, self.paths = make_pool(self.tmp, units=units, drive_factory=self.faults.open)
        self._set_pool(pool)
        self.model: dict[str, bytearray] = {}
        self.raid: dict[str, int] = {}
        self.versions: dict[str, dict[int, set[bytes]]] = {}
        self.seed = 0

    def teardown(self):
        pool = getattr(self, "pool", None)
        try:
            if pool is not None and not pool.closed:
                pool.close()
        finally:
            if getattr(self, "tmp", None):
                shutil.rmtree(self.tmp, ignore_errors=True)

    def _set_pool(self, pool: Pool) -> None:
        if self.small_log:
            pool.meta.log_size = min(pool.meta.log_size, max(pool.meta.log_off + 4096, 12 * 1024))
        self.syncs.watch(pool)
        self.faults.calls.clear()
        self.pool = pool

    def _open(self) -> Pool:
        return Pool.open(self.paths, drive_factory=self.faults.open)

    def _data(self, n: int) -> bytes:
        self.seed += 1
        return pattern(self.seed, n)

    def _pick(self, data) -> str:
        return data.draw(st.sampled_from(sorted(self.model)), label="ld")

    def _modify(self, name: str, off: int, buf: bytes) -> None:
        """Applies a change to the model, remembering the segments' old contents."""
        m = self.model[name]
        vs = self.versions.setdefault(name, {})
        for k in range(off // SEG, -(-(off + len(buf)) // SEG)):
            vs.setdefault(k, set()).add(seg_hash(m[k * SEG:(k + 1) * SEG]))
        m[off:off + len(buf)] = buf

    def _committed(self) -> None:
        self.versions.clear()

    # -- LD lifecycle -------------------------------------------------------------------
    @precondition(lambda self: len(self.model) < len(NAMES))
    @rule(data=st.data(), raid=st.sampled_from([0, 1, 5]), mib=st.integers(1, 16),
          thick=st.sampled_from([False, False, False, True]), dup=st.booleans())
    def create(self, data, raid, mib, thick, dup):
        if dup and self.model:
            with pytest.raises(Exists):
                self.pool.create_ld(self._pick(data), mib * MiB, raid=raid, thick=thick)
        name = data.draw(st.sampled_from([n for n in NAMES if n not in self.model]), label="name")
        self.pool.create_ld(name, mib * MiB, raid=raid, thick=thick)
        self.model[name] = bytearray(mib * MiB)
        self.raid[name] = raid
        self._committed()

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data):
        name = self._pick(data)
        self.pool.delete_ld(name)
        del self.model[name]
        del self.raid[name]
        self._committed()

    @precondition(lambda self: self.model)
    @rule(data=st.data(), delta=st.integers(-4, 4).filter(bool))
    def resize(self, data, delta):
        name = self._pick(data)
        m = self.model[name]
        new = len(m) + delta * MiB
        if new <= 0:
            with pytest.raises(InvalidArgument):
                self.pool.resize_ld(name, new)
            return
        new = min(new, MAX_MIB * MiB)
        self.pool.resize_ld(name, new)
        if new < len(m):
            del m[new:]
        else:
            m.extend(bytes(new - len(m)))
        self._committed()

    # -- I/O ------------------------------------------------------------------------------
    def _write(self, data):
        name = self._pick(data)
        off, n = data.draw(ranges(len(self.model[name])), label="range")
        buf = self._data(n)
        self.pool.get(name).write(off, buf)
        self._modify(name, off, buf)

    # Writes are what the model is about: three rules give them a bigger share of the
    # steps, and the I/O rules' "blk_" names sort first, where hypothesis's choices lean.
    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def blk_write(self, data):
        self._write(data)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def blk_overwrite(self, data):
        self._write(data)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def blk_rewrite(self, data):
        self._write(data)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), zeroes=st.booleans())
    def blk_trim(self, data, zeroes):
        name = self._pick(data)
        off, n = data.draw(ranges(len(self.model[name])), label="range")
        ld = self.pool.get(name)
        (ld.write_zeroes if zeroes else ld.trim)(off, n)
        self._modify(name, off, bytes(n))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def blk_recycle(self, data):
        """Unmap an allocated segment, commit, then write a few bytes into an unmapped
        segment: the freed slot is reused without a hole punch and must read as zeros
        around the new bytes."""
        src = self._pick(data)
        ks, _ = self.pool.get(src).l2.allocated()
        if len(ks):
            k = data.draw(st.sampled_from(sorted(ks.tolist())), label="freed segment")
            self.pool.get(src).trim(k * SEG, SEG)
            self._modify(src, k * SEG, bytes(SEG))
            self.pool.flush()
            self._committed()
        dst = self._pick(data)
        ld = self.pool.get(dst)
        holes = [k for k in range(ld.size // SEG) if not ld.l2.get(k)]
        k = data.draw(st.sampled_from(holes or list(range(ld.size // SEG))), label="target segment")
        so = data.draw(st.integers(0, SEG - 1), label="offset in segment")
        n = data.draw(st.integers(1, min(4096, SEG - so)), label="length")
        buf = self._data(n)
        ld.write(k * SEG + so, buf)
        self._modify(dst, k * SEG + so, buf)

    @precondition(lambda self: self.model)
    @rule(how=st.sampled_from(["flush", "checkpoint"]))
    def commit(self, how):
        self.pool.flush() if how == "flush" else self.pool.checkpoint()
        self._committed()

    @precondition(lambda self: self.model)
    @rule()
    def restart(self):
        """Clean shutdown (checkpoint) and start-up."""
        self.pool.close()
        self._set_pool(self._open())
        self._committed()
        assert check_pool(self.pool) == []

    @precondition(lambda self: self.model)
    @rule(flushed=st.booleans())
    def restart_crash(self, flushed):
        """Abandon the pool without close (kill -9), flushed first or not, and recover
        (checkpoint + log replay) from what is on the drives."""
        if flushed:  # everything must be there
            self._set_pool(crash_reopen(self.pool, self.paths, self.faults.open))
        else:
            self._crash_unflushed()
        self._committed()
        assert check_pool(self.pool) == []

    def _crash_unflushed(self):
        """Kill without flush: each segment reads as some content it had since the last
        commit; the model then follows what survived."""
        for d in self.pool.drives.values():
            d.close()
        self.pool.closed = True
        self._set_pool(self._open())
        assert sorted(self.pool.lds) == sorted(self.model)
        for name, m in self.model.items():
            got = self.pool.get(name).read(0, len(m))
            vs = self.versions.get(name, {})
            for k in range(len(m) // SEG):
                a, b = got[k * SEG:(k + 1) * SEG], m[k * SEG:(k + 1) * SEG]
                if a != b and seg_hash(a) not in vs.get(k, ()):
                    raise AssertionError(f"after a crash LD {name} segment {k} holds content it never had "
                                         f"since the last commit: {first_diff(a, bytes(b))}")
            self.model[name] = bytearray(got)

    # -- commit failures (DESIGN.md §9; commit_faults.py) ----------------------------------
    @rule(data=st.data())
    def commit_fails(self, data):
        """One metadata I/O of a quorum drive fails (EIO) under an operation that
        commits (a thick create takes three commits): what returned is done, what
        raised IOFailure is not, the pool stays writable, and a kill -9 right after
        finds the same pool. Sometimes instead every write to one quorum drive fails:
        the pool turns read-only, and a restart without the fault checks it and finds
        what was flushed before."""
        self.faults.calls.clear()
        if data.draw(PERSISTENT, label="persistent"):
            self._commit_fails_persistent(data)
            return
        mirrored = [n for n in sorted(self.model) if self.raid[n] != 0]
        ops = ["flush", "checkpoint"] + ["create"] * (len(self.model) < len(NAMES)) \
            + ["write"] * bool(mirrored) + ["resize", "delete"] * bool(self.model)
        op = data.draw(st.sampled_from(ops), label="op")
        if op == "write":
            self.pool.checkpoint()       # no RStore is marked dirty: the write needs an intent
            self._committed()

        def run():
            if op in ("flush", "checkpoint"):
                self.commit(op)
            elif op == "create":
                self.create(data, data.draw(st.sampled_from([0, 1, 5]), label="raid"),
                            data.draw(st.integers(1, 16), label="mib"),
                            data.draw(st.sampled_from([False, False, True]), label="thick"), False)
            elif op == "write":
                name = data.draw(st.sampled_from(mirrored), label="ld")
                k = data.draw(st.integers(0, len(self.model[name]) // SEG - 1), label="segment")
                so = data.draw(st.integers(0, SEG - 1), label="offset in segment")
                n = data.draw(st.integers(1, SEG - so), label="length")
                buf = self._data(n)
                self.pool.get(name).write(k * SEG + so, buf)
                self._modify(name, k * SEG + so, buf)
            elif op == "resize":
                self.resize(data, data.draw(st.integers(-4, 4).filter(bool), label="delta"))
            else:
                self.delete(data)
        run_one_shot(self, data, op, run, catalog=op in ("create", "resize", "delete"),
                     writes_data=op == "write")
        assert_same(self.pool, self.model, f"after a failed commit ({op})")
        assert_invariants(self.pool)
        assert check_pool(self.pool) == []
        # kill -9 now (commit_faults.kill_now)
        self._set_pool(kill_now(self.pool, self.paths, self.faults))
        self._committed()
        assert check_pool(self.pool) == []

    def _commit_fails_persistent(self, data):
        self.pool.flush()                # what is durable is the model
        self._committed()
        drive = data.draw(st.sampled_from(sorted(self.pool.quorum_ids)), label="quorum drive")
        arm_persistent(self.faults, self.pool, drive, data.draw(st.booleans(), label="blobs too"))
        ops = ["create"] if len(self.model) < len(NAMES) else []
        if self.model:
            ops += ["delete", "resize"]
        op = data.draw(st.sampled_from(ops), label="op")
        with pytest.raises(PoolReadOnly):
            if op == "create":
                name = data.draw(st.sampled_from([n for n in NAMES if n not in self.model]), label="name")
                self.pool.create_ld(name, MiB, raid=data.draw(st.sampled_from([0, 1, 5]), label="raid"))
            elif op == "delete":
                self.pool.delete_ld(self._pick(data))
            else:
                name = self._pick(data)
                size = len(self.model[name])
                self.pool.resize_ld(name, size + MiB if size < MAX_MIB * MiB else size - MiB)
        event(f"commit fault: persistent, {op}")
        assert_read_only(self.pool, sorted(self.model), "probe")
        assert_same(self.pool, self.model, "read-only")     # reads go on
        self._set_pool(reopen_after_read_only(self.pool, self.paths, self.faults,
                                              data.draw(st.booleans(), label="clean close")))
        assert_same(self.pool, self.model, f"after the read-only run (the {op} that failed)")
        assert check_pool(self.pool) == []
        if self.model:                   # writable again
            self._write(data)
            self.pool.flush()
            self._committed()

    # -- after every step ---------------------------------------------------------------
    @invariant()
    def same_bytes(self):
        if hasattr(self, "pool"):
            assert_same(self.pool, self.model)
            for name, raid in self.raid.items():
                assert self.pool.get(name).raid == raid

    @invariant()
    def structure(self):
        if hasattr(self, "pool"):
            assert_invariants(self.pool)


EngineMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("VSAND_MODEL_EXAMPLES", "50")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestEngineModel = EngineMachine.TestCase


# ---- 2. deleted data never reappears --------------------------------------------------
MARK = b"DELETED-LUN-DATA"


def _mark_pattern(n: int) -> bytes:
    return (MARK * (n // len(MARK) + 1))[:n]


def _partial_writes(ld, model: bytearray, rng: np.random.Generator) -> None:
    """A few unaligned writes per segment, leaving most of every segment unwritten."""
    for k in range(ld.size // SEG):
        for _ in range(2):
            off = k * SEG + int(rng.integers(0, SEG - 5000))
            n = int(rng.integers(1, 5000))
            buf = rng.integers(1, 256, size=n, dtype=np.uint8).tobytes()
            ld.write(off, buf)
            model[off:off + n] = buf


def _fill_and_delete(pool, names, model) -> set[tuple[int, int]]:
    """Writes the marker over every byte of ``names``, flushes, deletes them; returns
    the PSEGs their data sat on."""
    psegs = set()
    for name in names:
        ld = pool.get(name)
        for k in range(ld.size // SEG):
            ld.write(k * SEG, _mark_pattern(SEG))
        assert ld.read(0, ld.size) == _mark_pattern(ld.size)
        psegs |= ld_psegs(pool, ld)
        model.pop(name, None)
    pool.flush()
    for name in names:
        pool.delete_ld(name)
    pool.flush()
    assert_invariants(pool)
    return psegs


def test_deleted_lun_bytes_never_reappear(tmp_path):
    """LUNs of every RAID type are filled with a marker and deleted; new LUNs (thin with
    partial writes, thick, partial trims) over the freed space read zeros wherever they
    were not written, before and after clean and crash restarts. A keeper LUN of each
    type shares RStores with the victims, so freed slots of live RStores are reused
    (zeroed on allocation); whole RStores freed are reused as PSEGs (hole punched)."""
    pool, paths = make_pool(str(tmp_path), size=8 * MiB + 24 * 2 * MiB)
    rng = np.random.default_rng(1)
    model: dict[str, bytearray] = {}
    victims = []
    for raid in (0, 1, 5):
        victim = pool.create_ld(f"victim{raid}", 24 * MiB, raid=raid)
        keeper = pool.create_ld(f"keeper{raid}", 8 * MiB, raid=raid)
        model[keeper.name] = bytearray(8 * MiB)
        victims.append(victim.name)
        # Interleaved allocation: victim and keeper segments share RStores.
        for k in range(victim.size // SEG):
            victim.write(k * SEG, b"\1")
            if k < 8:
                buf = pattern(1000 * raid + k, SEG)
                keeper.write(k * SEG, buf)
                model[keeper.name][k * SEG:(k + 1) * SEG] = buf
    freed = _fill_and_delete(pool, victims, model)

    reused: set[tuple[int, int]] = set()
    for round_ in range(3):
        created = []
        for raid, mib, thick in (((0, 1, 5)[round_], 8, True), (0, 16, False), (1, 8, False), (5, 16, False)):
            name = f"new{round_}-{raid}{'-thick' if thick else ''}"
            ld = pool.create_ld(name, mib * MiB, raid=raid, thick=thick)
            created.append(name)
            model[name] = bytearray(mib * MiB)
            assert ld.read(0, ld.size) == bytes(ld.size), f"{name}: not zeros when new"
            _partial_writes(ld, model[name], rng)
            # partial trims / zeroes of allocated segments write zeros in place
            for k in range(0, ld.size // SEG, 3):
                off = k * SEG + int(rng.integers(0, SEG // 2))
                (ld.trim if k % 2 else ld.write_zeroes)(off, 777)
                model[name][off:off + 777] = bytes(777)
            reused |= ld_psegs(pool, ld) & freed
            got = ld.read(0, ld.size)
            assert MARK not in got, f"{name}: deleted LUN bytes visible"
            assert got == model[name], f"{name}: {first_diff(got, bytes(model[name]))}"
        assert_same(pool, model, f"round {round_}")
        assert_invariants(pool)
        pool = clean_reopen(pool, paths) if round_ % 2 == 0 else crash_reopen(pool, paths)
        assert_same(pool, model, f"after restart {round_}")
        assert_invariants(pool)
        assert check_pool(pool) == []
        # After a restart no free slot is known to be zeroed: new segments must be.
        for name in created:
            ld = pool.get(name)
            for k in range(ld.size // SEG):
                if not ld.l2.get(k) and rng.random() < 0.7:
                    off = k * SEG + int(rng.integers(0, SEG - 100))
                    ld.write(off, b"\xaa" * 100)
                    model[name][off:off + 100] = b"\xaa" * 100
            assert MARK not in ld.read(0, ld.size)
        assert_same(pool, model, f"after writes following restart {round_}")
        # This round's LUNs become the next round's victims.
        freed |= _fill_and_delete(pool, created, model)
    assert reused, "the new LUNs never reused the deleted LUNs' PSEGs: test is vacuous"
    pool = crash_reopen(pool, paths)
    assert_same(pool, model, "at the end")
    assert check_pool(pool) == []
    pool.close()


# ---- 3. full pool, bad requests ---------------------------------------------------------
BIG_MIB = 100  # more than the 8 x 6 PSEGs of the pool can hold as RAID0


def test_full_pool_enospc_and_typed_errors(tmp_path):
    pool, paths = make_pool(str(tmp_path), size=8 * MiB + 6 * 2 * MiB)
    model: dict[str, bytearray] = {}
    keep = pool.create_ld("keep", 4 * MiB, raid=5)
    model["keep"] = bytearray(pattern(7, 4 * MiB))
    keep.write(0, model["keep"])
    pool.flush()

    # -- a thin LD larger than the pool: whole-segment writes until ENOSPC -----------------
    big = pool.create_ld("big", BIG_MIB * MiB, raid=0)
    model["big"] = bytearray(BIG_MIB * MiB)
    k = 0
    with pytest.raises(NoSpace) as ei:
        while k < BIG_MIB:
            buf = pattern(100 + k, SEG)
            big.write(k * SEG, buf)
            model["big"][k * SEG:(k + 1) * SEG] = buf
            k += 1
    assert ei.value.errno == errno.ENOSPC
    assert 0 < k < BIG_MIB
    full_at = k
    assert_invariants(pool)
    assert_same(pool, model, "after ENOSPC")
    # Partial writes into new segments fail the same way; writes to allocated ones work.
    with pytest.raises(NoSpace):
        big.write(full_at * SEG + 100, b"x" * 10)
    with pytest.raises(NoSpace):
        big.write((full_at + 5) * SEG, bytes(SEG))
    big.write(3, b"still writable")
    model["big"][3:3 + 14] = b"still writable"
    # A write straddling the last allocated segment and a new one: the first part may
    # land, nothing outside the request changes.
    lo = full_at * SEG - 1000
    with pytest.raises(NoSpace):
        big.write(lo, pattern(5, 3000))
    got = big.read(lo, 3000)
    assert got[:1000] in (bytes(model["big"][lo:lo + 1000]), pattern(5, 3000)[:1000])
    model["big"][lo:lo + 1000] = got[:1000]
    assert got[1000:] == bytes(2000)  # never-allocated segment
    assert_same(pool, model, "after a straddling write hit ENOSPC")  # nothing else changed
    # ENOSPC for a thick LD that does not fit; nothing is left behind.
    with pytest.raises(NoSpace):
        pool.create_ld("thick", 64 * MiB, raid=1, thick=True)
    assert "thick" not in pool.lds
    # Flush and checkpoint still work on a full pool (metadata reserve).
    pool.flush()
    pool.checkpoint()
    assert_invariants(pool)
    assert_same(pool, model, "full pool after flush")

    # -- freeing space makes room again (after the commit that frees it) ----------------
    big.trim(0, 16 * SEG)
    model["big"][:16 * SEG] = bytes(16 * SEG)
    pool.flush()
    pool.flush()  # the second commit returns the dropped RStores' PSEGs
    buf = pattern(9, SEG)
    big.write(full_at * SEG, buf)
    model["big"][full_at * SEG:(full_at + 1) * SEG] = buf
    assert_invariants(pool)
    assert_same(pool, model, "after reclaim")
    pool.flush()

    # -- out-of-range I/O: OutOfRange (EINVAL), nothing written -------------------------
    ld = pool.get("keep")
    size = ld.size
    bad = [(-1, 1), (0, -1), (size, 1), (size - 1, 2), (size + SEG, 0), (0, size + 1), (-SEG, 2 * SEG)]
    for off, n in bad:
        for op in ("read", "write", "trim", "write_zeroes"):
            if op == "write" and n < 0:
                continue  # a write's length is its buffer's
            with pytest.raises(OutOfRange) as ei:
                if op == "read":
                    ld.read(off, n)
                elif op == "write":
                    ld.write(off, b"\xee" * max(n, 0))
                else:
                    getattr(ld, op)(off, n)
            assert ei.value.errno == errno.EINVAL, (op, off, n)
    assert ld.read(size, 0) == b""
    ld.write(size, b"")
    ld.trim(size, 0)

    # -- impossible sizes: InvalidArgument (EINVAL), no LD created or changed ------------
    bad_sizes = [0, -MiB, MiB + 1, 512, MiB // 2, UNITS.max_ld_size + MiB, 1.5 * MiB, "1M", None]
    for s in bad_sizes:
        with pytest.raises(InvalidArgument) as ei:
            pool.create_ld("nope", s, raid=0)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(InvalidArgument):
            pool.resize_ld("keep", s)
    for raid in (2, 6, -1, "5", None):
        with pytest.raises(InvalidArgument):
            pool.create_ld("nope", MiB, raid=raid)
    for name in ("", "a/b", "x" * 256, "tab\there"):
        with pytest.raises(InvalidArgument):
            pool.create_ld(name, MiB, raid=0)
    with pytest.raises(Exists):
        pool.create_ld("keep", MiB, raid=0)
    with pytest.raises(NotFound):
        pool.get("nope")
    with pytest.raises(NotFound):
        pool.delete_ld("nope")
    with pytest.raises(NotFound):
        pool.resize_ld("nope", MiB)
    assert "nope" not in pool.lds and pool.get("keep").size == 4 * MiB
    assert_invariants(pool)
    assert_same(pool, model, "after bad requests")

    # -- nothing on disk was damaged: reopen (clean and after a crash) and compare -------
    pool = clean_reopen(pool, paths)
    assert_same(pool, model, "after clean reopen")
    assert_invariants(pool)
    assert check_pool(pool) == []
    pool = crash_reopen(pool, paths)
    assert_same(pool, model, "after crash reopen")
    assert_invariants(pool)
    assert check_pool(pool) == []
    pool.close()


def test_enospc_by_placement_leaves_no_half_created_ld(tmp_path):
    """Free PSEGs that cannot be placed (RAID5 needs 5 drives with room, RAID1 4 pairs)
    are no space: a thick create that runs out half-way raises ENOSPC and leaves no
    LD, no leaked slot or PSEG behind; thin writes get ENOSPC; data stays intact."""
    specs = [(str(tmp_path / f"d{i}.img"), 8 * MiB + 2 * MiB * (16 if i < 4 else 4), "default")
             for i in range(8)]
    paths = [p for p, _, _ in specs]
    pool = Pool.create(specs, UNITS)
    model = {"fill": bytearray(120 * MiB)}
    fill = pool.create_ld("fill", 120 * MiB, raid=0)
    small = [pool.allocator.drives[i] for i in range(4, 8)]
    k = 0
    while sum(pool.allocator.usable(d) for d in small) > 2:
        buf = pattern(k, SEG)
        fill.write(k * SEG, buf)
        model["fill"][k * SEG:(k + 1) * SEG] = buf
        k += 1
    pool.flush()
    assert pool.allocator.free_psegs() > 10  # enough PSEGs for 16 MiB of RAID5, on too few drives
    for raid, mib in ((5, 64), (1, 64), (5, 16)):
        with pytest.raises(NoSpace) as ei:
            pool.create_ld("thick", mib * MiB, raid=raid, thick=True)
        assert ei.value.errno == errno.ENOSPC
        assert "thick" not in pool.lds
        pool.flush()
        pool.flush()  # returns the RStores the failed create had taken
        assert_invariants(pool)
    thin = pool.create_ld("thin", 64 * MiB, raid=5)
    model["thin"] = bytearray(64 * MiB)
    with pytest.raises(NoSpace):
        for j in range(64):
            buf = pattern(10_000 + j, SEG)
            thin.write(j * SEG, buf)
            model["thin"][j * SEG:(j + 1) * SEG] = buf
    assert_invariants(pool)
    assert_same(pool, model, "after placement ENOSPC")
    pool = crash_reopen(pool, paths)
    assert_same(pool, model, "after crash reopen")
    assert_invariants(pool)
    assert check_pool(pool) == []
    pool.close()
