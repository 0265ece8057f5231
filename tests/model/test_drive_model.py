"""Model check of drive failure and rebuild (issue 12 item 2, DESIGN.md §5, §7).

A hypothesis state machine on an 11-drive pool (one RSS: five RAID1 pairs and one
more drive, so a RAID1 column and a RAID5 member each have somewhere to go)
drives random create (RAID1 / RAID5) / write / trim / snapshot of any LD /
snapclone with BGCOPY steps / delete / drive add / drive removal (its metadata copy,
if any, moves first) / leveling steps (also split around other operations) / drive failure (of a drive that holds no
metadata copy; a second one only once the first is rebuilt, so redundancy always
covers what is lost) / rebuild steps with random budgets / a rebuild step split
as the daemon runs it (plan, copy, then writes, trims, snapshots, deletes, BGCOPY
steps or commits, then the switch) / flush / clean restart / kill -9 after a
flush.

The model is a bytearray per LD: a snapshot or snapclone copies its source's
bytes when made; only writes change bytes. After every step every LD reads byte
for byte as its model, ``check_pool`` and the engine invariants hold, and every
RStore keeps the placement rules: distinct drives, one RSS, RAID1 copies on a
pair. Once the rebuild is done no RStore has a member on a failed drive.

Writes stay inside one segment, so a NoSpace (two failed drives leave fewer than
the four RAID1 pairs a new RAID1 RStore needs) happens before anything is
written and leaves the LD as it was. ``VSAND_DRIVE_EXAMPLES`` overrides the
example count (default 30).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_invariants import check_invariants  # noqa: E402
from test_snapshot_model import crash_reopen, first_diff, new_pool, pattern  # noqa: E402

from vsand.disk import level  # noqa: E402
from vsand.disk.check import check_pool  # noqa: E402
from vsand.disk.pool import Pool  # noqa: E402
from vsand.disk.rebuild import key  # noqa: E402
from vsand.errors import InvalidArgument, NoSpace  # noqa: E402
from vsand.units import MiB, Units  # noqa: E402

UNITS = Units(quorum=8 * MiB, lmap_segments=4)
DRIVES = 11
MAX_LDS = 6


class DriveMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="vsand-drive-model-")
        self.pool, self.paths = new_pool(self.tmp, UNITS, ndrives=DRIVES, size=96 * MiB)
        self.model: dict[str, bytearray] = {}
        self.seq = 0
        self.plan = None          # a rebuild step between its copy and its switch

    def teardown(self):
        try:
            if self.plan is not None:
                self.plan.finish()
            self.pool.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- helpers ------------------------------------------------------------------
    def _name(self) -> str:
        self.seq += 1
        return f"ld{self.seq}"

    def _pick(self, data) -> str:
        return data.draw(st.sampled_from(sorted(self.model)), label="ld")

    def _drop_invalid(self) -> None:
        """A snapshot whose copy on write found no room (two failed drives leave
        RAID1 too few pairs) is invalidated, as designed: it leaves the model."""
        for name in list(self.model):
            if self.pool.get(name).invalid:
                del self.model[name]

    def _leaving(self) -> list[int]:
        return sorted(i for i, r in self.pool.drive_recs.items()
                      if r.get("leaving") and not r.get("removed"))

    def _failed(self) -> list[int]:
        return sorted(i for i, d in self.pool.drives.items() if d.failed)

    def _write(self, data) -> None:
        name = self._pick(data)
        ld = self.pool.get(name)
        k = data.draw(st.integers(0, ld.size // MiB - 1), label="segment")
        off = data.draw(st.integers(0, MiB - 1), label="offset")
        n = data.draw(st.integers(1, MiB - off), label="length")
        self.seq += 1
        buf = pattern(self.seq, n)
        try:
            ld.write(k * MiB + off, buf)
        except NoSpace:
            return
        finally:
            self._drop_invalid()
        if name in self.model:
            self.model[name][k * MiB + off:k * MiB + off + n] = buf

    def _trim(self, data) -> None:
        name = self._pick(data)
        ld = self.pool.get(name)
        k = data.draw(st.integers(0, ld.size // MiB - 1), label="segment")
        try:
            ld.trim(k * MiB, MiB)
        except NoSpace:
            return
        finally:
            self._drop_invalid()
        if name in self.model:
            self.model[name][k * MiB:(k + 1) * MiB] = bytes(MiB)

    def _snapshot(self, data, clone: bool = False) -> None:
        src = self._pick(data)
        name = self._name()
        try:
            (self.pool.snapclone if clone else self.pool.snapshot)(src, name)
        except NoSpace:
            return
        self.model[name] = bytearray(self.model[src])

    def _bgcopy(self, data) -> None:
        copying = [n for n in self.model if self.pool.get(n).role.copying]
        if copying:
            name = data.draw(st.sampled_from(sorted(copying)), label="clone")
            try:
                self.pool.bgcopy_step(name, data.draw(st.integers(1, 8), label="budget"))
            except NoSpace:
                pass
            finally:        # a predecessor that finds no room for its copy is invalidated
                self._drop_invalid()

    def _delete(self, data) -> None:
        name = self._pick(data)
        self.pool.delete_ld(name)
        del self.model[name]

    # ---- rules --------------------------------------------------------------------
    @initialize(raids=st.lists(st.sampled_from([1, 5]), min_size=1, max_size=3),
                fail=st.booleans(), data=st.data())
    def some_data(self, raids, fail, data):
        """LDs with data to start from, and maybe a drive failed under them."""
        for raid in raids:
            name = self._name()
            self.pool.create_ld(name, 4 * MiB, raid=raid)
            self.model[name] = bytearray(4 * MiB)
            self.seq += 1
            buf = pattern(self.seq, 4 * MiB)
            self.pool.get(name).write(0, buf)
            self.model[name][:] = buf
        if fail:
            self.fail_drive(data)

    @precondition(lambda self: len(self.model) < MAX_LDS)
    @rule(raid=st.sampled_from([1, 5]), mib=st.integers(2, 6))
    def create(self, raid, mib):
        name = self._name()
        try:
            self.pool.create_ld(name, mib * MiB, raid=raid)
        except NoSpace:
            return
        self.model[name] = bytearray(mib * MiB)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def write(self, data):
        self._write(data)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def trim(self, data):
        self._trim(data)

    @precondition(lambda self: self.model and len(self.model) < MAX_LDS)
    @rule(data=st.data(), clone=st.booleans())
    def snapshot(self, data, clone):
        self._snapshot(data, clone)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def bgcopy_step(self, data):
        self._bgcopy(data)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data):
        self._delete(data)

    @precondition(lambda self: self.plan is None and len(self._failed()) < 2
                  and not self.pool.damage().todo)
    @rule(data=st.data())
    def fail_drive(self, data):
        ok = [i for i in sorted(self.pool.drives) if i not in self.pool.quorum_ids
              and not self.pool.drives[i].failed]
        self.pool.fail_drive(data.draw(st.sampled_from(ok), label="drive"))

    @precondition(lambda self: self.plan is None and len(self.pool.drives) < 14)
    @rule(mib=st.sampled_from([64, 96, 160]))
    def add_drive(self, mib):
        """A drive added at run time (the twelfth starts a second RSS): found again
        at every reopen though only the first paths are given."""
        self.pool.add_drive(os.path.join(self.tmp, f"added{len(self.pool.drives)}.img"), mib * MiB)

    @precondition(lambda self: self.plan is None)
    @rule(data=st.data())
    def remove_drive(self, data):
        """A drive is emptied (by the rebuild steps) and then let go; refused, with
        nothing changed, when its members would have nowhere to go."""
        ok = [i for i, r in sorted(self.pool.drive_recs.items())
              if not r.get("leaving") and not r.get("removed")]
        if not ok:
            return
        i = data.draw(st.sampled_from(ok), label="remove")
        try:
            self.pool.remove_drive(i)
        except (NoSpace, InvalidArgument):
            assert not self.pool.drive_recs[i].get("leaving")
            return
        event("drive removal started")

    @precondition(lambda self: self.plan is None and (self._failed() or self._leaving()))
    @rule(budget=st.integers(1, 8))
    def rebuild_step(self, budget):
        r = self.pool.rebuild_step(budget)
        if r is not None:
            assert not r["failed"], r["failed"]

    @precondition(lambda self: self.pool.damage().todo)
    @rule(data=st.data(), budget=st.integers(1, 8),
          op=st.sampled_from(["write", "write", "trim", "snapshot", "clone", "bgcopy", "delete",
                              "flush", "none"]))
    def rebuild_interleaved(self, data, budget, op):
        """A step as the daemon runs it: planned and copied, then something else
        runs (as NBD requests and other tasks do between the copy and the switch),
        then the switch."""
        self._interleave(self.pool.rebuild_plan(budget, set()), data, op)

    @precondition(lambda self: self.plan is None and not self.pool.damage().todo)
    @rule(data=st.data(), budget=st.integers(1, 8),
          op=st.sampled_from(["write", "trim", "snapshot", "clone", "bgcopy", "delete", "flush"]))
    def level_interleaved(self, data, budget, op):
        """A leveling step split the same way (its moves are rebuild moves)."""
        self._interleave(self.pool.level_plan(budget, set()), data, op)

    @precondition(lambda self: self.plan is None)
    @rule()
    def level_to_done(self):
        """Leveling ends (every move lowers sum(used^2 / size) over the drives)
        and then no move is left that would lower the spread."""
        sq, moved = level.potential(self.pool), 0
        for _ in range(1000):
            r = self.pool.level_step(8)
            if r is None:
                break
            assert not r["failed"], r["failed"]
            moved += r["copied"]
            assert level.potential(self.pool) < sq
            sq = level.potential(self.pool)
        else:
            raise AssertionError("leveling did not end")
        assert self.pool.damage().todo or self.pool.level_remaining() == 0
        event("leveled: PSEGs moved" if moved else "leveled: nothing to move")

    def _interleave(self, plan, data, op) -> None:
        self.plan = plan
        if self.plan is None:
            return
        self.plan.io()
        if op in ("write", "trim", "bgcopy", "delete") and self.model:
            for _ in range(data.draw(st.integers(1, 3), label="times") if op == "write" else 1):
                getattr(self, "_" + op)(data)
        elif op in ("snapshot", "clone") and self.model and len(self.model) < MAX_LDS:
            self._snapshot(data, op == "clone")
        elif op == "flush":
            self.pool.flush()
        plan, self.plan = self.plan, None
        r = plan.finish()
        assert not r["failed"], r["failed"]
        event(f"rebuild switch after {op}: {'switched' if r['copied'] else 'nothing switched'}")

    @precondition(lambda self: (self.pool.damage().todo or self._leaving()) and self.plan is None)
    @rule()
    def rebuild_to_done(self):
        """Every damaged member is rebuilt, except those reported as having no room
        (a RAID1 column needs a healthy pair its RStore does not use)."""
        unplaced: set = set()
        for _ in range(1000):
            r = self.pool.rebuild_step(8, set(unplaced))
            if r is None:
                break
            assert not r["failed"], r["failed"]
            unplaced.update(r["skipped"])
        leaving = self._leaving()
        gone = self.pool.finish_removals()
        assert set(gone) <= set(leaving)
        for i in gone:
            event("drive removed")
            assert self.pool.drive_recs[i].get("removed")
        left = {key(x) for x in self.pool.damage().todo}
        assert left == unplaced, (left, unplaced)
        event(f"rebuild to done: {'some left without room' if left else 'all rebuilt'}")
        for raid, _, _, _ in left:
            assert raid == 1 or len(self._failed()) > 1 or self._leaving(), \
                "a RAID5 member with room was not rebuilt"
        for t in self.pool.space.tables.values():
            for idx in t.live_indices().tolist():
                ds = [d for d, _ in self.pool.space.physical(t.raid, t.members(idx))]
                on_failed = any(key((t, idx, c)) in left for c in range(t.width))
                assert on_failed or not set(ds) & set(self._failed()), (t.raid, idx, ds)

    @precondition(lambda self: self.plan is None)
    @rule()
    def flush(self):
        self.pool.flush()

    @precondition(lambda self: self.plan is None)
    @rule()
    def restart(self):
        self.pool.close()
        self.pool = Pool.open(self.paths)

    @precondition(lambda self: self.plan is None)
    @rule()
    def kill_after_flush(self):
        self.pool = crash_reopen(self.pool, self.paths)

    # ---- invariants ---------------------------------------------------------------
    @invariant()
    def reads_match_the_model(self):
        for name, want in self.model.items():
            got = self.pool.get(name).read(0, len(want))
            assert got == want, f"{name}: {first_diff(got, bytes(want))}"

    @invariant()
    def pool_is_consistent(self):
        if self.plan is not None:
            return            # a step's new PSEGs are taken but not yet in any RStore
        assert check_pool(self.pool) == []
        assert check_invariants(self.pool) == []
        alloc = self.pool.allocator
        q = self.pool.quorum_ids
        assert len(set(q)) == len(q) == 3, q
        assert not any(self.pool.drive_recs[i].get("leaving") for i in q), q
        for t in self.pool.space.tables.values():
            for idx in t.live_indices().tolist():
                ds = [d for d, _ in self.pool.space.physical(t.raid, t.members(idx))]
                assert len(set(ds)) == len(ds), (t.raid, idx, ds)
                assert any(set(ds) <= set(g) for g in alloc.rss[t.ldad]), ds
                if t.raid == 1:
                    assert all(ds[2 * c + 1] == alloc.partner(ds[2 * c]) for c in range(4)), ds


TestDriveModel = DriveMachine.TestCase
TestDriveModel.settings = settings(
    max_examples=int(os.environ.get("VSAND_DRIVE_EXAMPLES", "30")), stateful_step_count=30,
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
