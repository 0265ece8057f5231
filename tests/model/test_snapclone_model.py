"""Model check of snapclones and BGCOPY (DESIGN.md §7, §8, §9, §12).

``SnapcloneMachine`` extends the idea of ``SnapshotMachine`` (test_snapshot_model.py,
whose helpers it imports) to snapclones: a hypothesis state machine drives random
create (RAID 0/1/5, 2-8 MiB) / write / trim / write_zeroes to ANY LD (LUNs,
snapshots, clones still copying, independent clones) / snapshot of any LD (a
copying clone included) / snapclone of any LD (several of one source, clones of
clones and of snapshots) / ``bgcopy_step`` with random budgets / BGCOPY run to the
end / a step split as the daemon runs it (``bgcopy_plan``, ``io``, ``finish``) with
writes, snapshots, snapclones, deletes (the clone's too), commits or a crash in
between / delete of any LD (the source of a copying clone and copying clones too) /
resize / the ``snapclone`` mode (eager or scaling) switched at any time / flush /
checkpoint / clean restart / crash restart, after a flush or, when no client wrote
since the last commit, without one (BGCOPY cursors live in memory only and are
lost; so are the copies of steps since the last commit). Pools are sometimes tight (a filler LUN eats the free space: creating a
snapclone may fail with NoSpace and must then change nothing), LMAPs sometimes
tiny (absent-LMAP fills), the metadata log sometimes tiny, and the BGCOPY knobs
``QUIESCE_M`` / ``MAX_SCANS`` sometimes small so the multi-step "leave" phase and
resumed copy cursors are exercised on small LDs.

The model is a bytearray per LD; a snapclone copies its source's bytes when it is
made, and nothing but a write to an LD changes its bytes. After every step:

- every LD reads byte for byte as its model; chains are the model's chains;
- ``check_pool(pool) == []``, ``engine_invariants``, the slot / PSEG / reservation
  accounting of the snapshot model, and its space accounting (usage_invariants.py:
  a delete frees exactly the LD's exclusive segments, seeds included);
- per reserved LD the pool's reservation is the sum of the LDs' ``reserve_left``,
  and an in-tree clone's reservation covers what BGCOPY still has to copy
  (``reserve_left >= snapclone.copy_need``);
- the seed invariant: for each adjacent pair P = pred(X), where X.Sp is set and
  P.Ss is clear, P reads exactly what X reads for that segment;
- changed-block diffs are a safe superset (test_snapshot_model.check_diffs): a
  copying clone's own copies (seeds) are reported, never a segment that differs;
- in-tree clones carry clone="copying" and space="reserve", are never invalidated;
  fills carry no share bit without the neighbour to share with.

A clone whose step reported ``done`` has left its tree (no pred, no succ,
clone="independent"); deleting its former source then leaves its bytes alone.

``VSAND_SNAPCLONE_EXAMPLES`` overrides the example count (default 40) for bug hunts.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from commit_faults import (
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
from engine_invariants import check_invariants
from usage_invariants import backing_problems, delete_measured, usage_problems
from test_snapshot_model import (
    FILLER,
    TIGHT_DRIVE,
    accounting_problems,
    check_diffs,
    crash_reopen,
    first_diff,
    new_pool,
    pattern,
    ranges,
)

from vsand.disk import snapclone
from vsand.disk.ops import reservation  # noqa: E402
from vsand.disk.role import Role  # noqa: E402


def is_copying(ld) -> bool:
    return ld.role.copying


from vsand.disk.check import check_pool
from vsand.disk.pool import Pool
from vsand.errors import InvalidArgument, IOFailure, NoSpace, NotFound, PoolReadOnly
from vsand.mapping.lmap import ALLOCATED, SP, SS
from vsand.units import MiB, Units

SEG = MiB
MAX_LDS = 7
MAX_STEPS_TO_DONE = 2000
KNOBS = (snapclone.QUIESCE_M, snapclone.MAX_SCANS)     # restored after every example
INTERLEAVED = ["write", "write", "zero", "snapshot", "clone", "delete", "commit", "crash"]


# ---- checks shared with the deterministic tests ------------------------------------------
def seed_problems(pool, reads: dict[str, bytes] | None = None) -> list[str]:
    """The seed invariant: where X.Sp is set over a predecessor P whose Ss is clear, P's
    own data equals X's data (byte for byte, both read through the engine)."""
    out = []
    reads = {} if reads is None else reads

    def content(ld) -> bytes:
        if ld.name not in reads:
            reads[ld.name] = ld.read(0, ld.size)
        return reads[ld.name]

    for x in pool.lds_by_id.values():
        p = x.pred
        if p is None or x.invalid or p.invalid:
            continue
        for k in range(x.l2.nsegs):
            if x.l2.get(k) & SP and not p.l2.get(k) & SS:
                a = content(p)[k * SEG:(k + 1) * SEG]
                b = content(x)[k * SEG:(k + 1) * SEG]
                if a != b:
                    out.append(f"seed {p.name}/{x.name} segment {k}: {first_diff(a, b)}")
    return out


def reservation_problems(pool) -> list[str]:
    """The reservation is exactly what the reserved LDs still have coming, and an
    in-tree snapclone's covers what BGCOPY still has to copy into it."""
    out = []
    want: dict[tuple[int, str], int] = {}
    for ld in pool.lds_by_id.values():
        if ld.role.reserved:
            key = (ld.raid, ld.ldad)
            want[key] = want.get(key, 0) + getattr(ld, "reserve_left", 0)
            if is_copying(ld):
                need = reservation(ld)
                if ld.reserve_left < need:
                    out.append(f"clone {ld.name}: {ld.reserve_left} segments reserved, "
                               f"BGCOPY still has to copy {need}")
    got = {k: v for k, v in pool.space.reserve.items() if v}
    want = {k: v for k, v in want.items() if v}
    if got != want:
        out.append(f"pool reservation {got} != sum of reserve_left {want}")
    return out


def run_to_done(pool, name: str, budget: int = 8) -> list[dict]:
    steps = []
    for _ in range(MAX_STEPS_TO_DONE):
        r = pool.bgcopy_step(name, budget)
        steps.append(r)
        if r["done"]:
            return steps
    raise AssertionError(f"BGCOPY of {name} did not finish in {MAX_STEPS_TO_DONE} steps: {steps[-3:]}")


# ---- the state machine --------------------------------------------------------------------
class SnapcloneMachine(RuleBasedStateMachine):
    """Random snapclone / BGCOPY / snapshot / CFW / delete / restart sequences against a
    bytearray per LD. See the module docstring for what is checked."""

    @initialize(small_log=st.booleans(), lmap_segments=st.sampled_from([2048, 4, 2]),
                tight=st.sampled_from([False, False, True]), first_raid=st.sampled_from([0, 1, 5]),
                first_mib=st.integers(2, 8), mode=st.sampled_from(["eager", "scaling", None]),
                quiesce=st.sampled_from([KNOBS[0], 1, 2, 3]), scans=st.sampled_from([KNOBS[1], 1]))
    def setup(self, small_log, lmap_segments, tight, first_raid, first_mib, mode, quiesce, scans):
        self.tmp = tempfile.mkdtemp(prefix="vsand-clonemodel-")
        snapclone.QUIESCE_M, snapclone.MAX_SCANS = quiesce, scans
        self.small_log = small_log
        self.tight = tight
        self.faults = self._new_faults()   # every pool's drives: the commit fault rule arms them
        self.syncs = SyncWatch()
        pool, self.paths = self._create_pool(Units(quorum=8 * MiB, lmap_segments=lmap_segments),
                                             TIGHT_DRIVE if tight else 128 * MiB)
        self._set_pool(pool)
        self.model: dict[str, bytearray] = {}
        self.chains: list[list[str]] = []      # chains of 2+ LDs, oldest first
        self.reserved: set[str] = set()        # reserved snapshots (not clones)
        self.copying: set[str] = set()         # snapclones still in their tree
        self.independent: set[str] = set()     # snapclones that left their tree
        self.source: dict[str, str] = {}       # clone -> the LD it was made of
        self.invalid: set[str] = set()
        self.mode = snapclone.DEFAULT_MODE
        self.seed = 0
        self.nid = 0
        self.dirty = False                     # client writes since the last commit
        self.check_filler = True
        if mode is not None:
            self.set_mode(mode)
        self.create(first_raid, first_mib)

    def teardown(self):
        snapclone.QUIESCE_M, snapclone.MAX_SCANS = KNOBS
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

    def _pick(self, data, usable: bool = False, label: str = "ld") -> str:
        return data.draw(st.sampled_from(self._names(usable)), label=label)

    def _new_name(self) -> str:
        self.nid += 1
        return f"ld{self.nid}"

    def _chain_of(self, name: str) -> list[str] | None:
        for c in self.chains:
            if name in c:
                return c
        return None

    def _unchain(self, name: str) -> None:
        c = self._chain_of(name)
        if c is not None:
            c.remove(name)
            if len(c) < 2:
                self.chains.remove(c)

    def _link(self, src: str, name: str) -> None:
        c = self._chain_of(src)
        if c is None:
            c = [src]
            self.chains.append(c)
        c.insert(c.index(src), name)

    def _nospace_ok(self, name: str, off: int) -> None:
        assert self.tight, "ENOSPC in a pool with plenty of space"
        ld = self.pool.get(name)
        if ld.succ is None:
            k = off // SEG
            assert not ld.l2.get(k) & ALLOCATED, \
                f"{name}: I/O to its own allocated segment {k} failed for lack of space"

    def _snapshot_state(self):
        pool = self.pool
        return (sorted(pool.lds), [[x.name for x in pool.chain(n)] for n in sorted(pool.lds)],
                dict(pool.space.reserve), pool.allocator.free_psegs(),
                {n: (ld.attrs.copy(), getattr(ld, "reserve_left", None)) for n, ld in pool.lds.items()})

    # -- LD lifecycle ---------------------------------------------------------------------
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

    # snapclones, BGCOPY and I/O are what this machine is about: one-argument rules with
    # names that sort first (see SnapshotMachine), some of them twice.
    @precondition(lambda self: self._names() and len(self._names()) < MAX_LDS)
    @rule(data=st.data())
    def a_clone(self, data):
        self._snapclone(data)

    @precondition(lambda self: self._names() and len(self._names()) < MAX_LDS)
    @rule(data=st.data())
    def a_clone_again(self, data):
        self._snapclone(data)

    def _snapclone(self, data):
        src = self._pick(data)
        name = self._new_name()
        if src in self.invalid:
            with pytest.raises(InvalidArgument):
                self.pool.snapclone(src, name)
            return
        before = self._snapshot_state()
        try:
            c = self.pool.snapclone(src, name)
        except NoSpace:
            assert self.tight, "a snapclone failed for lack of space in a roomy pool"
            assert self._snapshot_state() == before, "a failed snapclone changed the pool"
            return
        assert c.name == name and c.size == len(self.model[src])
        assert c.role.copying and c.role.reserved
        assert c.succ is self.pool.get(src)
        self.model[name] = bytearray(self.model[src])
        self._link(src, name)
        self.copying.add(name)
        self.source[name] = src

    @precondition(lambda self: self._names() and len(self._names()) < MAX_LDS)
    @rule(data=st.data())
    def a_snapshot(self, data):
        reserve = data.draw(st.sampled_from([False, False, True]), label="reserve")
        # copying clones are the interesting sources
        names = self._names()
        pool = sorted(self.copying) if self.copying and data.draw(st.booleans(), label="of_clone") else names
        src = data.draw(st.sampled_from(pool), label="src")
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
        assert snap.size == len(self.model[src])
        self.model[name] = bytearray(self.model[src])
        self._link(src, name)
        if reserve:
            self.reserved.add(name)

    @precondition(lambda self: self.copying)
    @rule(data=st.data())
    def a_bgcopy_step(self, data):
        name = data.draw(st.sampled_from(sorted(self.copying)), label="clone")
        self._step(name, data.draw(st.integers(1, 8), label="budget"))

    @precondition(lambda self: self.copying)
    @rule(data=st.data())
    def a_bgcopy_step_more(self, data):
        name = data.draw(st.sampled_from(sorted(self.copying)), label="clone")
        self._step(name, data.draw(st.integers(1, 8), label="budget"))

    def _step(self, name: str, budget: int) -> dict:
        return self._check_step(name, budget, self.pool.bgcopy_step(name, budget))

    # The daemon plans a step on the event loop, copies in a worker thread while the
    # loop serves requests, then applies the result on the loop (bgcopy_plan ->
    # io -> finish). Requests between planning and applying must be harmless.
    @precondition(lambda self: self.copying and hasattr(self.pool, "bgcopy_plan"))
    @rule(data=st.data())
    def a_bgcopy_interleaved(self, data):
        self._interleaved(data)

    @precondition(lambda self: self.copying and hasattr(self.pool, "bgcopy_plan"))
    @rule(data=st.data())
    def a_bgcopy_interleaved_more(self, data):
        self._interleaved(data)

    def _interleaved(self, data):
        name = data.draw(st.sampled_from(sorted(self.copying)), label="clone")
        budget = data.draw(st.integers(1, 3), label="budget")     # small: more steps in flight
        plan = self.pool.bgcopy_plan(name, budget)
        if isinstance(plan, dict):
            self._check_step(name, budget, plan)
            return
        ops = st.lists(st.sampled_from(INTERLEAVED), max_size=3)
        for op in data.draw(ops, label="before_io"):
            if self._interleave(data, op):
                return                       # restarted: the plan died with the pool
        plan.io()
        for op in data.draw(ops, label="before_finish"):
            if self._interleave(data, op):
                return
        if name in self.model:
            self._check_step(name, budget, plan.finish())
        else:
            with pytest.raises(NotFound):
                plan.finish()

    def _interleave(self, data, op: str) -> bool:
        """One request served while a BGCOPY step is in flight; True if it restarted
        the pool."""
        n = len(self._names())
        if op == "write" and self._names(usable=True):
            self._write(data)
        elif op == "zero" and self._names(usable=True):
            self.blk_zero(data)
        elif op == "snapshot" and 0 < n < MAX_LDS:
            self.a_snapshot(data)
        elif op == "clone" and 0 < n < MAX_LDS:
            self._snapclone(data)
        elif op == "delete" and self.model:
            self.delete(data)
        elif op == "commit":
            self.commit("flush", False)
        elif op == "crash":
            self.restart(True, False, False)
            return True
        return False

    def _check_step(self, name: str, budget: int, r: dict) -> dict:
        assert set(r) >= {"copied", "bytes", "remaining", "done", "phase"}, r
        assert r["copied"] >= 0 and r["bytes"] >= 0 and r["remaining"] >= 0, r
        assert r["bytes"] % SEG == 0, r
        if r["done"]:
            assert r["phase"] == "done" and r["remaining"] == 0, r
            self._left_tree(name)
        else:
            assert r["phase"] in ("copy", "leave"), r
            # one call may finish the copy phase and start the leave phase: each phase
            # copies at most ``budget`` segments
            assert r["bytes"] <= 2 * budget * SEG, f"a step with budget {budget} copied {r['bytes']} bytes"
            if r["phase"] == "copy":
                assert r["bytes"] <= budget * SEG, f"a copy step with budget {budget} copied {r['bytes']} bytes"
            else:
                assert snapclone.shared_left(self.pool.get(name)) == 0, "leave phase with shared segments"
            st_ = self.pool.clone_state(name)
            assert not st_["done"] and st_["phase"] in ("copy", "leave"), st_
        return r

    def _left_tree(self, name: str) -> None:
        c = self.pool.get(name)
        assert c.pred is None and c.succ is None, f"{name} reported done but is still linked"
        assert c.role is Role.CLONE, c.attrs
        assert not c.role.reserved, c.role
        assert not c.l2.fill & (SP | SS), hex(c.l2.fill)
        assert self.pool.clone_state(name)["done"]
        self.copying.discard(name)
        self.independent.add(name)
        self._unchain(name)

    @precondition(lambda self: self.copying)
    @rule(data=st.data())
    def bgcopy_to_done(self, data):
        name = data.draw(st.sampled_from(sorted(self.copying)), label="clone")
        budget = data.draw(st.integers(1, 8), label="budget")
        for _ in range(MAX_STEPS_TO_DONE):
            if self._step(name, budget)["done"]:
                break
        else:
            raise AssertionError(f"BGCOPY of {name} never finished")
        # once done, further steps are no-ops
        r = self.pool.bgcopy_step(name, budget)
        assert r["done"] and r["copied"] == 0 and r["bytes"] == 0, r

    @precondition(lambda self: self.copying or self.independent)
    @rule(data=st.data())
    def delete_clone_source(self, data):
        """Deletes the LD a clone (copying or independent) was made of, if it still exists."""
        clone = data.draw(st.sampled_from(sorted(self.copying | self.independent)), label="clone")
        src = self.source.get(clone)
        if src is None or src not in self.model:
            return
        self._delete(src)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data):
        name = data.draw(st.sampled_from(sorted(self.model)), label="ld")
        self._delete(name)

    def _delete(self, name: str) -> None:
        excl, freed = delete_measured(self.pool, name)     # seeds included
        assert freed == excl, f"deleting {name} freed {freed} segments, its exclusive said {excl}"
        del self.model[name]
        for s in (self.reserved, self.invalid, self.copying, self.independent):
            s.discard(name)
        self.source.pop(name, None)
        self._unchain(name)

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

    # two arguments and a late name: hypothesis would otherwise pick it very often
    @precondition(lambda self: self.copying)
    @rule(mode=st.sampled_from(["eager", "scaling"]), twice=st.booleans())
    def z_set_mode(self, mode, twice):
        self.set_mode(mode)
        if twice:
            self.set_mode(mode)

    def set_mode(self, mode):
        self.pool.set_setting("snapclone", mode)
        self.mode = mode
        assert snapclone.mode(self.pool.settings) == mode

    @precondition(lambda self: self.tight)
    @rule(nsegs=st.integers(1, 64))
    def a_fill(self, nsegs):
        self.dirty = True
        self.check_filler = True
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
        self.dirty = True
        self.check_filler = True
        ld, m = self.pool.get(FILLER), self.model[FILLER]
        k = data.draw(st.integers(0, ld.size // SEG - 1), label="segment")
        n = data.draw(st.integers(1, ld.size // SEG - k), label="segments")
        ld.trim(k * SEG, n * SEG)
        m[k * SEG:(k + n) * SEG] = bytes(n * SEG)

    # -- I/O ------------------------------------------------------------------------------
    def _target(self, data) -> str:
        # copying clones and their neighbours are where the interesting CFWs happen
        names = self._names(usable=True)
        hot = sorted({n for c in self.copying for n in (self._chain_of(c) or [c])
                      if n in names})
        if hot and data.draw(st.booleans(), label="hot"):
            return data.draw(st.sampled_from(hot), label="ld")
        return data.draw(st.sampled_from(names), label="ld")

    def _write(self, data):
        self.dirty = True
        name = self._target(data)
        off, n = data.draw(ranges(len(self.model[name]), self.tight), label="range")
        buf = self._data(n)
        try:
            self.pool.get(name).write(off, buf)
        except NoSpace:
            self._nospace_ok(name, off)
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
        self.dirty = True
        name = self._target(data)
        off, n = data.draw(ranges(len(self.model[name]), self.tight), label="range")
        ld = self.pool.get(name)
        try:
            if how == "trim":
                ld.trim(off, n)
            else:
                ld.write_zeroes(off, n, may_trim=how == "zeroes")
        except NoSpace:
            self._nospace_ok(name, off)
            return
        self.model[name][off:off + n] = bytes(n)

    @precondition(lambda self: self.invalid)
    @rule(data=st.data())
    def blk_invalid_io(self, data):
        ld = self.pool.get(data.draw(st.sampled_from(sorted(self.invalid)), label="ld"))
        with pytest.raises(IOFailure):
            ld.read(0, 4096)
        with pytest.raises(IOFailure):
            ld.write(0, b"x")

    @rule(how=st.sampled_from(["flush", "checkpoint"]), twice=st.booleans())
    def commit(self, how, twice):
        self.dirty = False
        self.check_filler = True
        for _ in range(1 + twice):
            self.pool.flush() if how == "flush" else self.pool.checkpoint()

    @rule(crash=st.booleans(), checkpoint_first=st.booleans(), unflushed=st.booleans())
    def restart(self, crash, checkpoint_first, unflushed):
        """Clean or kill -9 restart; BGCOPY cursors (memory only) are lost. With
        ``unflushed`` (and no client write since the last commit) the kill comes
        without a flush: the map changes of BGCOPY steps since the last commit are
        lost with their copies, which must change no LD's bytes."""
        if crash and unflushed and not self.dirty:
            for d in self.pool.drives.values():
                d.close()
            self.pool.closed = True
            self._set_pool(self._open())
        elif crash:
            if checkpoint_first:
                self.pool.checkpoint()
            self._set_pool(crash_reopen(self.pool, self.paths, self.faults.open))
        else:
            self.pool.close()
            self._set_pool(self._open())
        self._restarted()

    def _restarted(self) -> None:
        self.dirty = False
        self.check_filler = True
        assert snapclone.mode(self.pool.settings) == self.mode, "the snapclone mode did not survive a restart"
        assert not self.pool.bgcopy_state

    # -- commit failures (DESIGN.md §9; commit_faults.py) --------------------------------
    @rule(data=st.data())
    def commit_fails(self, data):
        """One metadata I/O of a quorum drive fails (EIO) under an operation that
        commits (a snapclone, a BGCOPY run to its end, a mode change among them):
        what returned is done, what raised IOFailure is not (a clone whose leaving
        failed is still copying), the pool stays writable, and a kill -9 right after
        finds the same pool. Sometimes instead every write to one quorum drive fails:
        the pool turns read-only, and a restart without the fault checks it and finds
        what was flushed before."""
        self.faults.calls.clear()
        if data.draw(PERSISTENT, label="persistent"):
            self._commit_fails_persistent(data)
            return
        n = len(self._names())
        room = n < MAX_LDS
        mirrored = [x for x in self._names(usable=True) if self.pool.get(x).raid != 0]
        ops = ["flush", "checkpoint", "mode"] + ["create"] * room + ["write"] * bool(mirrored) \
            + ["delete"] * bool(self.model) + ["snapshot", "clone"] * (room and n > 0) \
            + ["bgcopy"] * bool(self.copying)
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
                self.dirty = True
                name = data.draw(st.sampled_from(mirrored), label="ld")
                off, k = data.draw(ranges(len(self.model[name]), one_segment=True), label="range")
                buf = self._data(k)
                try:
                    self.pool.get(name).write(off, buf)
                except NoSpace:
                    self._nospace_ok(name, off)
                else:
                    self.model[name][off:off + k] = buf
            elif op == "delete":
                self.delete(data)
            elif op == "snapshot":
                self.a_snapshot(data)
            elif op == "clone":
                self._snapclone(data)
            elif op == "bgcopy":
                self.bgcopy_to_done(data)
            else:
                self.set_mode(data.draw(st.sampled_from(["eager", "scaling"]), label="mode"))
        run_one_shot(self, data, op, run, writes_data=op in ("write", "bgcopy"),
                     catalog=op in ("create", "delete", "snapshot", "clone", "bgcopy", "mode"))
        self.same_bytes_chains_and_seeds()
        self.structure()
        # kill -9 now (commit_faults.kill_now)
        self.check_filler = True
        self._set_pool(kill_now(self.pool, self.paths, self.faults))
        self._restarted()

    def _commit_fails_persistent(self, data):
        self.commit("flush", False)      # what is durable is the model
        drive = data.draw(st.sampled_from(sorted(self.pool.quorum_ids)), label="quorum drive")
        arm_persistent(self.faults, self.pool, drive, data.draw(st.booleans(), label="blobs too"))
        ops = ["create", "mode"]
        if self.model:
            ops.append("delete")
        if self._names(usable=True) and len(self._names()) < MAX_LDS:
            ops += ["snapshot", "clone"]
        op = data.draw(st.sampled_from(ops), label="op")
        other = "eager" if self.mode == "scaling" else "scaling"
        op = refused_read_only(op, {
            "create": lambda: self.pool.create_ld(self._new_name(), 2 * MiB,
                                                  raid=data.draw(st.sampled_from([0, 1, 5]))),
            "delete": lambda: self.pool.delete_ld(data.draw(st.sampled_from(sorted(self.model)), label="ld")),
            "snapshot": lambda: self.pool.snapshot(self._pick(data, usable=True), self._new_name()),
            "clone": lambda: self.pool.snapclone(self._pick(data, usable=True), self._new_name()),
            "mode": lambda: self.pool.set_setting("snapclone", other),
        }, "mode", self.tight)
        event(f"commit fault: persistent, {op}")
        assert_read_only(self.pool, self._names(usable=True), self._new_name())
        if self.copying:
            with pytest.raises(PoolReadOnly):
                self.pool.bgcopy_step(sorted(self.copying)[0], 8)
        # Reads go on. (No structure check here: the blobs of the failed rewrites stay
        # allocated until the restart, in case a superblock copy names them.)
        self.check_filler = True
        self.same_bytes_chains_and_seeds()
        self._set_pool(reopen_after_read_only(self.pool, self.paths, self.faults,
                                              data.draw(st.booleans(), label="clean close")))
        self._restarted()
        assert sorted(self.pool.lds) == sorted(self.model), \
            f"after the read-only run: LDs {sorted(self.pool.lds)} != model {sorted(self.model)} " \
            f"(the {op} that failed with PoolReadOnly)"
        self.same_bytes_chains_and_seeds()
        self.structure()
        if self._names(usable=True):     # writable again
            self._write(data)
            self.commit("flush", False)

    # -- after every step -----------------------------------------------------------------
    @invariant()
    def same_bytes_chains_and_seeds(self):
        if not hasattr(self, "pool"):
            return
        pool = self.pool
        assert sorted(pool.lds) == sorted(self.model), f"LDs {sorted(pool.lds)} != {sorted(self.model)}"
        reads: dict[str, bytes] = {}
        # the 64 MiB filler is in no chain: read it only after steps that touch it
        self.check_filler, check_filler = False, self.check_filler
        # An LD invalidated since the last step has left its chain like a delete
        # (ops.inv): so it does in the model, before any chain is compared.
        for name in self.model:
            if pool.get(name).invalid and name not in self.invalid:
                self._unchain(name)
        for name, want in self.model.items():
            ld = pool.get(name)
            if ld.invalid and name not in self.invalid:
                assert self.tight, f"{name} was invalidated in a pool with plenty of space"
                assert ld.info().get("space") == "on-demand", \
                    f"{name} ({ld.attrs.get('was')}) was invalidated"
                self.invalid.add(name)
            assert ld.invalid == (name in self.invalid), f"{name}: invalid flag went away"
            if ld.invalid:
                with pytest.raises(IOFailure):
                    ld.read(0, ld.size)
            elif name != FILLER or check_filler:
                got = reads[name] = ld.read(0, ld.size)
                if got != want:
                    raise AssertionError(f"LD {name} (RAID{ld.raid}, chain {[x.name for x in pool.chain(name)]}, "
                                         f"attrs {ld.attrs}): {first_diff(got, bytes(want))}")
            assert not (ld.pred is None and ld.l2.fill & SP), f"{name}: fill has Sp without a predecessor"
            assert not (ld.succ is None and ld.l2.fill & SS), f"{name}: fill has Ss without a successor"
            c = self._chain_of(name) or [name]
            assert [x.name for x in pool.chain(name)] == c, \
                f"chain of {name}: {[x.name for x in pool.chain(name)]} != model {c}"
            if name in self.copying:
                assert ld.role.copying and ld.role.reserved, ld.attrs
            elif name in self.independent:
                assert ld.role is Role.CLONE and not ld.role.reserved, ld.attrs
            elif name in self.invalid:
                assert ld.role is Role.INVALID, ld.role
            else:
                assert ld.role in (Role.LUN, Role.SNAPSHOT, Role.RESERVED_SNAPSHOT), ld.role
                assert (ld.role.reserved) == (name in self.reserved)
        problems = seed_problems(pool, reads)
        assert not problems, "seed invariant violated:\n  " + "\n  ".join(problems)

    @invariant()
    def diffs_are_safe(self):
        """test_snapshot_model.check_diffs, with copying clones and their seeds."""
        if hasattr(self, "pool"):
            check_diffs(self.pool, self.model, self._names())

    @invariant()
    def structure(self):
        if not hasattr(self, "pool"):
            return
        problems = check_pool(self.pool)
        problems += check_invariants(self.pool)
        problems += accounting_problems(self.pool)
        problems += reservation_problems(self.pool)
        problems += usage_problems(self.pool)
        problems += backing_problems(self.pool)
        if self.pool.space.reserve_segs and not any(
                ld.role.reserved for ld in self.pool.lds_by_id.values()):
            problems.append(f"{self.pool.space.reserve_segs} segments reserved without any "
                                f"reserved snapshot or in-tree clone")
        assert not problems, "pool invariants violated:\n  " + "\n  ".join(problems)


SnapcloneMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("VSAND_SNAPCLONE_EXAMPLES", "40")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestSnapcloneModel = SnapcloneMachine.TestCase
