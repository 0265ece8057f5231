"""Model check of the window a threaded BGCOPY step opens (vsand/disk/bgcopy.py).

The daemon plans a step on the event loop, copies its bytes in a worker thread and
applies the result later on the loop; NBD requests and control calls run in
between. This state machine keeps one planned step "in flight" and lets writes,
trims, snapshots, new snapclones, deletes (the clone itself and its source
included) and mode changes land between planning and the copy, and between the copy
and applying it. Every LD must still read exactly like its bytearray model after
every step; check_pool must be clean; with no step in flight the slot and PSEG
accounting of the snapshot model must hold (a step in flight owns allocated,
still unreferenced segments, which is its whole point).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_invariants import check_invariants  # noqa: E402
from test_snapshot_model import accounting_problems, first_diff, new_pool, pattern  # noqa: E402

from vsand.disk import snapclone  # noqa: E402


def is_copying(ld) -> bool:
    return ld.role.copying


from vsand.disk.check import check_pool  # noqa: E402
from vsand.errors import NotFound  # noqa: E402
from vsand.units import MiB, Units  # noqa: E402

SEG = MiB
SIZE = 6 * MiB
MAX_LDS = 6


class InterleaveMachine(RuleBasedStateMachine):
    @initialize(raid=st.sampled_from([0, 1, 5]), lmap=st.sampled_from([2048, 2]),
                older_snapshot=st.booleans())
    def setup(self, raid, lmap, older_snapshot):
        self.tmp = tempfile.mkdtemp(prefix="vsand-bgi-")
        self.pool, self.paths = new_pool(self.tmp, Units(quorum=8 * MiB, lmap_segments=lmap))
        self.seed = 0
        self.nid = 0
        self.pool.create_ld("src", SIZE, raid=raid)
        self.model = {"src": bytearray(SIZE)}
        for k in range(0, SIZE // SEG, 2):
            self._write("src", k * SEG + 100, 300_000)
        if older_snapshot:
            self._snap("src", "s0", clone=False)
        self._snap("src", "c0", clone=True)
        self.plan = None
        self.io_done = False

    def teardown(self):
        try:
            if not self.pool.closed:
                self.pool.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------
    def _write(self, name, off, n):
        self.seed += 1
        data = pattern(self.seed, n)
        self.pool.get(name).write(off, data)
        self.model[name][off:off + n] = data

    def _snap(self, src, name, clone):
        if clone:
            self.pool.snapclone(src, name)
        else:
            self.pool.snapshot(src, name)
        self.model[name] = bytearray(self.model[src])

    def _clones(self):
        return sorted(n for n in self.model if is_copying(self.pool.get(n)))

    # -- the step in flight ---------------------------------------------------------------
    @precondition(lambda self: self.plan is None)
    @rule(data=st.data(), budget=st.integers(1, 4))
    def plan_step(self, data, budget):
        clones = self._clones()
        if not clones:
            return
        p = self.pool.bgcopy_plan(data.draw(st.sampled_from(clones)), budget)
        if not isinstance(p, dict):
            self.plan, self.io_done = p, False

    @precondition(lambda self: self.plan is not None and not self.io_done)
    @rule()
    def copy_bytes(self):
        self.plan.io()
        self.io_done = True

    @precondition(lambda self: self.plan is not None and self.io_done)
    @rule()
    def apply_step(self):
        p, self.plan = self.plan, None
        try:
            p.finish()
        except NotFound:
            assert p.c.name not in self.model or self.pool.lds.get(p.c.name) is not p.c

    @precondition(lambda self: self.plan is None)
    @rule(data=st.data())
    def whole_step(self, data):
        clones = self._clones()
        if clones:
            self.pool.bgcopy_step(data.draw(st.sampled_from(clones)), data.draw(st.integers(1, 8)))

    # -- what may land in between -----------------------------------------------------------
    @rule(data=st.data(), k=st.integers(0, SIZE // SEG - 1), whole=st.booleans())
    def write(self, data, k, whole):
        name = data.draw(st.sampled_from(sorted(self.model)))
        if whole:
            self._write(name, k * SEG, SEG)
        else:
            self._write(name, k * SEG + data.draw(st.integers(0, SEG - 10)), 9)

    @rule(data=st.data(), k=st.integers(0, SIZE // SEG - 1))
    def trim(self, data, k):
        name = data.draw(st.sampled_from(sorted(self.model)))
        self.pool.get(name).trim(k * SEG, SEG)
        self.model[name][k * SEG:(k + 1) * SEG] = bytes(SEG)

    @precondition(lambda self: len(self.model) < MAX_LDS)
    @rule(data=st.data(), clone=st.booleans())
    def snapshot(self, data, clone):
        src = data.draw(st.sampled_from(sorted(self.model)))
        self.nid += 1
        self._snap(src, f"n{self.nid}", clone)

    @precondition(lambda self: len(self.model) > 1)
    @rule(data=st.data())
    def delete(self, data):
        name = data.draw(st.sampled_from(sorted(self.model)))
        self.pool.delete_ld(name)
        del self.model[name]

    @rule(mode=st.sampled_from(snapclone.MODES))
    def set_mode(self, mode):
        self.pool.settings["snapclone"] = mode

    @rule()
    def flush(self):
        self.pool.flush()

    # -- checks ----------------------------------------------------------------------------
    @invariant()
    def reads_match(self):
        for name, want in self.model.items():
            got = bytes(self.pool.get(name).read(0, SIZE))
            assert got == bytes(want), f"{name}: {first_diff(got, bytes(want))}"
        assert check_pool(self.pool) == []
        if self.plan is None:
            assert check_invariants(self.pool) == []
            assert accounting_problems(self.pool) == []

    def finish_all(self):
        if self.plan is not None:
            if not self.io_done:
                self.plan.io()
            try:
                self.plan.finish()
            except NotFound:
                pass
            self.plan = None
        for name in self._clones():
            for _ in range(10_000):
                if self.pool.bgcopy_step(name, 8)["done"]:
                    break
            assert self.pool.get(name).pred is None and self.pool.get(name).succ is None
        self.reads_match()


InterleaveMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("VSAND_BGI_EXAMPLES", "40")), stateful_step_count=30,
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class TestInterleave(InterleaveMachine.TestCase):
    pass


def test_interleaved_steps_then_everything_finishes():
    """A fixed interleaving, then every clone copied to the end (independence)."""
    m = InterleaveMachine()
    try:
        m.setup(raid=5, lmap=2, older_snapshot=True)
        m.plan_step(_Data([("c0")]), budget=2)
        m.write(_Data(["src"]), 0, False)
        m.copy_bytes()
        m.write(_Data(["c0"]), 2, True)
        m.apply_step()
        m.reads_match()
        m.finish_all()
        m.pool.get("src").write(0, b"x" * SEG)
        m.model["src"][0:SEG] = b"x" * SEG
        m.reads_match()
    finally:
        m.teardown()


class _Data:
    """Stands in for hypothesis' data object in the fixed sequence above."""

    def __init__(self, values):
        self.values = list(values)

    def draw(self, strategy, label=None):
        if self.values:
            return self.values.pop(0)
        return 0


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
