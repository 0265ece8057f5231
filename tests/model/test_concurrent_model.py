"""Model check of operations in flight at the same time (DESIGN.md §7, §9, §13).

The server splits a READ and a FLUSH into a part on the event loop and drive I/O
that may run later in a worker thread, while the loop goes on changing maps. This
state machine keeps several read jobs (``LogicalDisk.read_job``: resolved now,
``try_now`` / ``run`` / ``done`` later) and at most one commit job
(``Pool.begin_flush``: built now, ``run`` / ``finish`` later) in flight, and lets
writes, trims, write_zeroes, snapshots, snapclones, BGCOPY steps (whole, or
planned / copied / applied apart), deletes, resizes, flushes, checkpoints and
restarts land in between, on one pool with LUNs of RAID 0, 1 and 5. Jobs complete
in whatever order hypothesis picks. A job's ``run`` happens when its rule says
or, for a commit, at the latest when the loop waits for it (``Transactions.join``):
that is when a worker thread would be done at the latest.

What is checked, besides every LD reading byte for byte as its bytearray model
(each LD an independent copy taken at the snapshot instant) after every step:

- a read job begun at t0 and run at t1 returns, per byte, the LD's model value
  at t0, or a value written to that byte of that LD between t0 and t1 (NBD lets
  overlapping I/O go either way); never another LD's bytes or freed space, also
  when its LD was trimmed, shrunk or deleted in between (the read fence);
- a crash (kill -9: ``commit_faults.drop``, then ``Pool.open``) finds every
  segment of every LD holding a content it had since the last point that is
  guaranteed durable: the begin of the last commit job that finished without
  error, a plain flush, a checkpoint, a catalog operation (which commits all);
  a commit job in flight at the crash, run or not, may add to that but nothing
  else; a commit whose data sync failed guarantees nothing, and the next one
  must then cover what it had (``Journal.restore``);
- a write to a RAID1/5 RStore leaves it marked dirty (write intent) with no
  commit in flight that would declare it clean: such a commit synced before the
  write, so its "clean" would stop the next start from resyncing a torn stripe;
- with no read job in flight the fence holds no token and no waiting free, and
  the structural invariants (engine_invariants, check_pool) hold; check_pool
  holds always.

Two engine bugs this machine found are fixed; their reproducers are at the end of
this file: a read job that began before a slot changed owner is read again (it is
not ``intact()``), and a segment handed over since the last commit is not written
in place.

``VSAND_CONCURRENT_EXAMPLES`` overrides the example count for bug hunts.
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
from commit_faults import Faults, drop  # noqa: E402
from poolkit import make_pool  # noqa: E402
from engine_invariants import check_invariants  # noqa: E402
from test_engine_model import seg_hash  # noqa: E402
from test_snapshot_model import first_diff, pattern, ranges  # noqa: E402

from vsand.disk.check import check_pool  # noqa: E402
from vsand.disk.pool import Pool  # noqa: E402
from vsand.errors import InvalidArgument, IOFailure, NotFound  # noqa: E402
from vsand.mapping.lmap import ALLOCATED, entry_rsd  # noqa: E402
from vsand.meta import format as fmt  # noqa: E402
from vsand.units import MiB, Units  # noqa: E402

SEG = MiB
MAX_LDS = 5
MAX_READS = 4
# 32 PSEGs a drive: room for every LD and copy the rules can make (no ENOSPC to
# model), few enough RStores that freed slots are soon taken by another LD.
DRIVE = 8 * MiB + 32 * 2 * MiB


class RunWhenWaited:
    """Stands in for a commit job's "ran" event: the job's drive I/O runs when the
    machine's rule says, or at the latest when the loop waits for it, as a worker
    thread would have finished by then. Runs it on the calling thread, so every
    example replays the same way."""

    def __init__(self, job):
        self.job = job
        self.ran = False

    def set(self):
        self.ran = True

    def wait(self, timeout=None):
        if not self.ran:
            event("commit job: run when the loop waited for it")
            self.job.run()
        return True


class ReadInFlight:
    def __init__(self, name, off, n, job, t0: bytes):
        self.name, self.off, self.n, self.job = name, off, n, job
        self.t0 = np.frombuffer(t0, np.uint8)
        self.later: list[tuple[int, np.ndarray]] = []   # (position in the job, bytes) written since t0
        self.ran = False


class ConcurrentMachine(RuleBasedStateMachine):
    @initialize(faulty=st.booleans(), lmap_segments=st.sampled_from([2048, 2]), small_log=st.booleans(),
                raids=st.lists(st.sampled_from([0, 1, 5]), min_size=1, max_size=3),
                copy=st.sampled_from([None, "snapshot", "snapclone"]))
    def setup(self, faulty, lmap_segments, small_log, raids, copy):
        self.tmp = tempfile.mkdtemp(prefix="vsand-concmodel-")
        # Drives with injectable faults (a failed log append under a commit job) take
        # the worker path for every read piece; plain drives let try_now read the
        # page cache without blocking. Half the examples get each.
        self.faults = Faults() if faulty else None
        self.small_log = small_log
        units = Units(quorum=8 * MiB, lmap_segments=lmap_segments)
        self.paths = [os.path.join(self.tmp, f"d{i}.img") for i in range(8)]
        self._set_pool(Pool.create([(p, DRIVE, "default") for p in self.paths], units, **self._factory()))
        self.model: dict[str, bytearray] = {}
        # Per LD and segment, [(seq, hash)]: the contents it took and when; what a
        # crash may show is derived from it and ``durable`` (see _allowed).
        self.hist: dict[str, list[list[tuple[int, bytes]]]] = {}
        self.seq = 0
        self.durable = 0
        self.nid = 0
        self.seed = 0
        self.reads: list[ReadInFlight] = []
        self.commit = None            # [job, seq at its begin, fault drawn when it ran]
        self.plan = None              # a BGCOPY step planned, maybe copied, not applied
        self.plan_copied = False
        for raid in raids:
            self.create(raid, 4)
        if copy:          # a tree from the start: CFW, handovers and BGCOPY from the first step
            self._write_at("ld1", 0, 3 * SEG + 5)
            self.snapshot(_Draw(["ld1"]), copy == "snapclone")

    def teardown(self):
        pool = getattr(self, "pool", None)
        try:
            for r in getattr(self, "reads", []):
                r.job.done()
            if pool is not None and not pool.closed:
                pool.close()
        finally:
            if getattr(self, "tmp", None):
                shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------
    def _factory(self) -> dict:
        return {} if self.faults is None else {"drive_factory": self.faults.open}

    def _set_pool(self, pool: Pool) -> None:
        if self.small_log:   # LogFull and checkpoint-at-half inside commits and intents
            pool.meta.log_size = min(pool.meta.log_size, max(pool.meta.log_off + 4096, 12 * 1024))
        self.pool = pool

    def _names(self) -> list[str]:
        return sorted(self.model)

    def _pick(self, data, label="ld") -> str:
        return data.draw(st.sampled_from(self._names()), label=label)

    def _new_name(self) -> str:
        self.nid += 1
        return f"ld{self.nid}"      # never reused: a read job's LD is known by name

    def _tick(self) -> int:
        self.seq += 1
        return self.seq

    def _all_durable(self) -> None:
        """Everything so far is on disk (a flush, checkpoint, catalog operation)."""
        self._durable_at(self._tick())

    def _durable_at(self, seq: int) -> None:
        if seq <= self.durable:
            return
        self.durable = seq
        for segs in self.hist.values():
            for h in segs:
                i = max(j for j, (s, _) in enumerate(h) if s <= seq)
                del h[:i]

    def _modify(self, name: str, off: int, buf) -> None:
        """The model's change, as a write, trim or zeroing of [off, off+len) of an LD."""
        n = len(buf)
        m = self.model[name]
        m[off:off + n] = buf
        s = self._tick()
        for k in range(off // SEG, -(-(off + n) // SEG)):
            self.hist[name][k].append((s, seg_hash(m[k * SEG:(k + 1) * SEG])))
        new = np.frombuffer(bytes(buf), np.uint8)
        for r in self.reads:
            if r.name == name and not r.ran:
                lo, hi = max(off, r.off), min(off + n, r.off + r.n)
                if lo < hi:
                    r.later.append((lo - r.off, new[lo - off:hi - off]))

    def _new_ld(self, name: str, content: bytearray) -> None:
        self.model[name] = content
        s = self._tick()
        self.hist[name] = [[(s, seg_hash(content[k * SEG:(k + 1) * SEG]))] for k in range(len(content) // SEG)]

    def _allowed(self, name: str, k: int) -> set[bytes]:
        """What segment k of LD ``name`` may hold after a crash: its content at the
        durable point, or any it took since."""
        return {h for s, h in self.hist[name][k] if s > self.durable} | \
            {next(h for s, h in reversed(self.hist[name][k]) if s <= self.durable)}

    def _redundant_keys(self, name: str, off: int, n: int) -> set:
        ld = self.pool.get(name)
        out = set()
        for k in range(off // SEG, -(-(off + n) // SEG)):
            e = ld.l2.get(k)
            assert e & ALLOCATED, f"{name} segment {k}: written, yet not its own allocation"
            out.add(((ld.raid, ld.ldad), entry_rsd(e)))
        return out

    def _check_intents(self, name: str, off: int, n: int, log_start) -> None:
        """The write just made to [off, off+n) of a redundant LD (see the module doc).
        A checkpoint during the write (the log restarted) synced what came before it
        and cleared every intent: then only the last segment's must be there."""
        if self.pool.get(name).raid == 0 or not n:
            return
        if self.pool.tx.log_start != log_start:
            off, n = off + n - 1, 1
        tx = self.pool.tx
        job = tx.inflight
        for key in self._redundant_keys(name, off, n):
            assert key in tx.dirty, f"{name}: RStore {key} was written without a write intent"
            assert job is None or key not in job.covered, \
                f"{name}: RStore {key} was written while a commit that declares it clean is in flight"

    # -- LD lifecycle (catalog operations commit everything) ---------------------------------
    # One rule draws which: catalog operations commit everything, and too many of
    # them would leave a commit job little to cover.
    @rule(data=st.data())
    def catalog(self, data):
        self._catalog(data)

    @rule(data=st.data())
    def catalog_more(self, data):
        self._catalog(data)

    def _catalog(self, data):
        ops = ["create", "snapshot"] * (len(self.model) < MAX_LDS) + ["delete"] * (len(self.model) > 1) \
            + ["resize"] * bool(self.model)
        op = data.draw(st.sampled_from(ops), label="catalog operation")
        if op == "create":
            self.create(data.draw(st.sampled_from([0, 1, 5]), label="raid"), data.draw(st.integers(2, 4), label="MiB"))
        elif op == "snapshot":
            self.snapshot(data, data.draw(st.booleans(), label="snapclone"))
        elif op == "delete":
            self.delete(data)
        else:
            self.resize(data, data.draw(st.sampled_from([-2, -1, 1, 2]), label="MiB more"))

    def create(self, raid, mib):
        name = self._new_name()
        self.pool.create_ld(name, mib * MiB, raid=raid)
        self._new_ld(name, bytearray(mib * MiB))
        self._all_durable()

    def snapshot(self, data, clone):
        src = self._pick(data)
        name = self._new_name()
        (self.pool.snapclone if clone else self.pool.snapshot)(src, name)
        self._new_ld(name, bytearray(self.model[src]))
        self._all_durable()

    def delete(self, data):
        # LDs with a read job in flight count twice: deleting them is what the fence is for.
        name = data.draw(st.sampled_from(self._names() + [r.name for r in self.reads if r.name in self.model]),
                         label="ld")
        self.pool.delete_ld(name)
        del self.model[name]
        del self.hist[name]
        self._all_durable()

    def resize(self, data, delta):
        name = self._pick(data)
        ld = self.pool.get(name)
        m = self.model[name]
        new = min(max(len(m) + delta * MiB, 2 * MiB), 6 * MiB)
        if ld.pred is not None or ld.succ is not None:
            with pytest.raises(InvalidArgument):
                self.pool.resize_ld(name, new)
            return
        self.pool.resize_ld(name, new)
        if new < len(m):
            # A shrink is a write of nothing to the cut-off part for a read in flight.
            del m[new:]
            del self.hist[name][new // SEG:]
        else:
            m.extend(bytes(new - len(m)))
            s = self._tick()
            while len(self.hist[name]) < new // SEG:
                self.hist[name].append([(s, seg_hash(bytes(SEG)))])
        self._all_durable()

    # -- I/O on the loop ("blk_" sorts first: hypothesis leans towards the first rules) ----
    def _target(self, data) -> tuple[str, int, int] | None:
        """(LD, offset, length) for a write or zeroing; half the time, when a read job
        is in flight, one that overlaps it, which is where the fence and the "either
        value" rule have work to do."""
        names = self._names()
        # (not a read of an LD shrunk below where it began)
        aims = [r for r in self.reads if not r.ran and r.name in names
                and r.off < len(self.model[r.name])]
        if aims and data.draw(st.booleans(), label="overlap a read in flight"):
            r = data.draw(st.sampled_from(aims), label="read job")
            size = len(self.model[r.name])
            off = data.draw(st.integers(max(0, r.off - SEG), min(size, r.off + r.n) - 1), label="offset")
            n = data.draw(st.integers(1, min(size - off, 2 * SEG)), label="length")
            return r.name, off, n
        if not names:
            return None
        name = data.draw(st.sampled_from(names), label="ld")
        off, n = data.draw(ranges(len(self.model[name])), label="range")
        return name, off, n

    def _write(self, data):
        t = self._target(data)
        if t is not None:
            self._write_at(*t)

    def _write_at(self, name: str, off: int, n: int) -> None:
        self.seed += 1
        buf = pattern(self.seed, n)
        log_start = self.pool.tx.log_start
        self.pool.get(name).write(off, buf)
        self._modify(name, off, buf)
        self._check_intents(name, off, n, log_start)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def blk_write(self, data):
        self._write(data)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def blk_write_more(self, data):
        self._write(data)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), how=st.sampled_from(["trim", "zeroes", "zeroes_no_trim"]))
    def blk_zero(self, data, how):
        t = self._target(data)
        if t is None:
            return
        name, off, n = t
        ld = self.pool.get(name)
        if how == "trim":
            ld.trim(off, n)
        else:
            ld.write_zeroes(off, n, may_trim=how == "zeroes")
        self._modify(name, off, bytes(n))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def blk_recycle(self, data):
        """Unmaps a segment (one a read job in flight resolved, when there is one),
        commits, and writes into unmapped segments of LDs of the same RAID type: the
        freed slot is taken again at once, unless a read that resolved it holds it."""
        # (a read of an LD shrunk since it began may cover segments the LD lost)
        aims = [r for r in self.reads if not r.ran and r.name in self.model
                and r.off // SEG < len(self.model[r.name]) // SEG]
        if aims:
            r = data.draw(st.sampled_from(aims), label="read job")
            name = r.name
            ks = list(range(r.off // SEG, min((r.off + r.n - 1) // SEG + 1,
                                              len(self.model[name]) // SEG)))
            own = [j for j in ks if self.pool.get(name).l2.get(j) & ALLOCATED]
            k = data.draw(st.sampled_from(own or ks), label="segment")
        else:
            name = self._pick(data)
            k = data.draw(st.integers(0, len(self.model[name]) // SEG - 1), label="segment")
        self.pool.get(name).trim(k * SEG, SEG)
        self._modify(name, k * SEG, bytes(SEG))
        self.pool.flush()
        self._all_durable()
        # The same LD first (its open RStore is where the freed slot most likely is),
        # elsewhere than k, where its own write would make any bytes the read's due.
        raid = self.pool.get(name).raid
        for other in [name] + [n for n in self._names() if n != name and self.pool.get(n).raid == raid]:
            ld = self.pool.get(other)
            holes = [j for j in range(ld.size // SEG) if not ld.l2.get(j) & ALLOCATED and (other, j) != (name, k)]
            if holes:
                j = data.draw(st.sampled_from(holes), label=f"hole of {other}")
                if data.draw(st.booleans(), label="whole segment"):
                    self._write_at(other, j * SEG, SEG)
                else:
                    self._write_at(other, j * SEG + data.draw(st.integers(0, SEG - 4096), label="offset"), 4096)
                return

    # -- read jobs in flight ---------------------------------------------------------------
    # One rule (twice, so that the swarm testing that switches rules off per example
    # rarely loses it) moves one read job on by a step drawn from what is possible:
    # begin a new one, try the page cache, run, or end it. Several begin before the
    # first ends, and they end in any order.
    def _read_step(self, data):
        unran = [i for i, r in enumerate(self.reads) if not r.ran]
        ran = [i for i, r in enumerate(self.reads) if r.ran]
        steps = (["begin", "begin"] * (len(self.reads) < MAX_READS and bool(self.model))
                 + ["try_now", "run", "run", "abandon"] * bool(unran) + ["done", "done"] * bool(ran))
        step = data.draw(st.sampled_from(steps), label="read step")
        if step == "begin":
            name = self._pick(data)
            off, n = data.draw(ranges(len(self.model[name])), label="range")
            job = self.pool.get(name).read_job(off, n)
            assert job is not None, f"{name}: read_job({off}, {n}) gave None on a healthy pool"
            r = ReadInFlight(name, off, n, job, bytes(self.model[name][off:off + n]))
            self.reads.append(r)
            return
        if step in ("done", "abandon"):
            # Abandon: a READ whose client went away ends without reading.
            r = self.reads.pop(data.draw(st.sampled_from(ran if step == "done" else unran), label="read job"))
            r.job.done()
            return
        r = self.reads[data.draw(st.sampled_from(unran), label="read job")]
        if step == "run":
            r.job.run()
            self._check_read(r)
        elif r.job.try_now():
            event("read job: all from the page cache")
            self._check_read(r)

    @precondition(lambda self: self.model or self.reads)
    @rule(data=st.data())
    def a_read(self, data):
        self._read_step(data)

    @precondition(lambda self: self.model or self.reads)
    @rule(data=st.data())
    def a_read_more(self, data):
        self._read_step(data)

    def _check_read(self, r: ReadInFlight) -> None:
        """The read job's bytes (see the module doc), at the moment they were read."""
        r.ran = True
        if not r.job.intact():
            # A slot it resolved changed owner since it began: the server discards the
            # bytes and reads again with ld.read (checked against the model at every
            # step); a deleted LD's connections are dropped before anything is sent.
            event("read job: a slot changed owner, read again")
            return
        got = np.frombuffer(bytes(r.job.buf), np.uint8)
        assert len(got) == r.n
        ok = got == r.t0
        for pos, b in r.later:
            ok[pos:pos + len(b)] |= got[pos:pos + len(b)] == b
        if not ok.all():
            bad = np.flatnonzero(~ok)
            where = "deleted" if r.name not in self.model else f"size {len(self.model[r.name])}"
            raise AssertionError(
                f"read job {r.name}+{r.off}/{r.n} ({where}): {len(bad)} bytes neither what the LD held "
                f"when the read began nor written since, first at +{int(bad[0])} "
                f"(got {int(got[bad[0]])}, had {int(r.t0[bad[0]])}); "
                f"vs. the start: {first_diff(got.tobytes(), r.t0.tobytes())}")
        if r.later:
            event("read job: overlapped by a write")
        if r.name not in self.model:
            event("read job: its LD was deleted before it ran")
        if self.pool.space.fence.waiting:
            event("read job: ran with frees waiting behind it")

    # -- the commit job in flight ------------------------------------------------------------
    @precondition(lambda self: self.commit is not None or self.seq > self.durable)
    @rule(data=st.data())
    def a_commit(self, data):
        self._commit_step(data)

    @precondition(lambda self: self.commit is not None or self.seq > self.durable)
    @rule(data=st.data())
    def a_commit_more(self, data):
        self._commit_step(data)

    def _commit_step(self, data):
        """Begins the commit job (when something changed since the last commit: right
        after one it would cover nothing), or moves it on: its drive I/O, or its
        finish on the loop (which waits for the I/O if it has not run)."""
        if self.commit is None:
            self._commit_begin()
            return
        if not self.commit[2] and data.draw(st.booleans(), label="run before finish"):
            self._commit_run(data)
        else:
            self._finish_commit()

    def _commit_begin(self) -> None:
        job = self.pool.begin_flush()
        if job is None:              # checkpointed at once instead
            self._all_durable()
            return
        job._ran = RunWhenWaited(job)
        self.commit = [job, self.seq, False]
        event(f"commit job: {'data sync only' if job.records is None else 'records'}")

    def _commit_run(self, data):
        """The job's drive I/O, now; sometimes its data sync fails (it must then cover
        nothing and leave its changes to the next commit), or, on drives with faults,
        one quorum drive's log append (the metadata is rewritten: still durable)."""
        job = self.commit[0]
        kinds = ["ok", "ok", "ok", "sync"]
        if self.faults is not None and job.records is not None:
            kinds.append("log")
        kind = data.draw(st.sampled_from(kinds), label="fault")
        self.commit[2] = kind
        if job._ran.ran:             # the loop waited for it already
            return
        if kind == "sync":
            def failing_sync():
                raise IOFailure("injected: the commit's data sync failed")
            self.pool.sync_data = failing_sync
            try:
                job.run()
            finally:
                del self.pool.sync_data
        elif kind == "log":
            drive = data.draw(st.sampled_from(sorted(self.pool.quorum_ids)), label="quorum drive")
            rule_ = self.faults.add("pwrite", self.pool.drives[drive].path, (fmt.LOG_OFF, self.pool.units.quorum))
            try:
                job.run()
            finally:
                self.faults.clear()
            event(f"commit job: log fault {'fired' if rule_.fired else 'missed'}")
        else:
            job.run()

    def _finish_commit(self) -> None:
        job, begun, kind = self.commit
        self.commit = None
        err = job.finish()
        assert self.pool.tx.failed is None, f"one failed commit turned the pool read-only: {self.pool.tx.failed}"
        if kind == "sync" and job._ran.ran and err is not None:
            assert isinstance(err, IOFailure), f"a failed data sync gave {type(err).__name__}: {err}"
            # Nothing of it is durable: what it covered is the next commit's again,
            # unless a catalog operation or checkpoint since made everything durable.
            assert job.records is None or not self.pool.journal.empty() or self.durable >= begun, \
                "a commit whose data sync failed left the journal empty: its changes are lost"
            event("commit job: data sync failed")
            return
        assert err is None, f"the commit job failed: {err!r} (fault: {kind})"
        if job.records is not None and self.seq > begun:
            event("commit job: with records, changes made while it was in flight")
        self._durable_at(begun)

    # -- BGCOPY: whole steps, or one planned step in flight -------------------------------------
    def _clones(self) -> list[str]:
        return [n for n in self._names() if self.pool.get(n).role.copying]

    @precondition(lambda self: self.plan is not None or self._clones())
    @rule(data=st.data(), budget=st.integers(1, 4), whole=st.booleans())
    def bgcopy(self, data, budget, whole):
        """A whole BGCOPY step, or one step split as the daemon runs it (plan on the
        loop, copy, apply on the loop) moved on by one part."""
        if self.plan is not None and not whole:
            if not self.plan_copied:
                self.plan.io()
                self.plan_copied = True
                return
            p, self.plan = self.plan, None
            try:
                p.finish()
            except NotFound:      # the clone was deleted, or a whole step finished it
                assert p.c.name not in self.model or not self.pool.get(p.c.name).role.copying
            return
        clones = self._clones()
        if not clones:
            return
        name = data.draw(st.sampled_from(clones), label="clone")
        if whole:
            self.pool.bgcopy_step(name, budget)
            return
        p = self.pool.bgcopy_plan(name, budget)
        if not isinstance(p, dict):
            self.plan, self.plan_copied = p, False

    # -- durability ----------------------------------------------------------------------------
    @rule(data=st.data(), how=st.sampled_from(["flush", "checkpoint", "crash", "restart"]))
    def commit_now(self, data, how):
        """A plain flush or checkpoint (with a commit job in flight: after it), or
        kill -9, or a clean shutdown, then start-up."""
        if how == "crash":
            self._crash(data)
        elif how == "restart":
            self._clean_restart(data)
        else:
            self.pool.flush() if how == "flush" else self.pool.checkpoint()
            self._all_durable()

    def _settle_reads(self, data) -> None:
        """Reads still in flight complete (in an order drawn) before the drives go."""
        while self.reads:
            r = self.reads.pop(data.draw(st.sampled_from(range(len(self.reads))), label="read job"))
            if not r.ran:
                r.job.run()
                self._check_read(r)
            r.job.done()

    def _settle_plan(self) -> None:
        if self.plan is not None:
            self.plan = None          # abandoned with the pool: it holds no fence token

    def _crash(self, data):
        """kill -9 (a commit job in flight may have run or not), then start-up."""
        self._settle_reads(data)
        self._settle_plan()
        if self.commit is not None:
            job, begun, kind = self.commit
            if job._ran.ran and self.pool.tx.inflight is not job and kind != "sync":
                self._finish_commit()  # the loop finished it when it waited: its begin is durable
            self.commit = None
            event("crash with a commit job in flight")
        drop(self.pool)
        self._set_pool(Pool.open(self.paths, **self._factory()))
        assert self._names() == sorted(self.pool.lds), f"LDs after the crash: {sorted(self.pool.lds)}"
        for name, m in self.model.items():
            got = self.pool.get(name).read(0, len(m))
            for k in range(len(m) // SEG):
                a = got[k * SEG:(k + 1) * SEG]
                if seg_hash(a) not in self._allowed(name, k):
                    raise AssertionError(
                        f"after a crash LD {name} segment {k} holds a content it did not have since the "
                        f"last durable point (seq {self.durable}, now {self.seq}): "
                        f"vs. the model {first_diff(a, bytes(m[k * SEG:(k + 1) * SEG]))}")
            if got != m:
                event("crash: lost writes that were not durable")
                for k in range(len(m) // SEG):
                    self._modify(name, k * SEG, got[k * SEG:(k + 1) * SEG])
        self._all_durable()
        assert check_pool(self.pool) == []

    def _clean_restart(self, data):
        """Clean shutdown (its checkpoint waits for a commit job in flight) and start-up."""
        self._settle_reads(data)
        self._settle_plan()
        if self.commit is not None and self.commit[0].records is None and not self.commit[0]._ran.ran:
            # Not the pool's to wait for (tx.inflight holds only a commit with records):
            # the server's drain lets the worker end before it closes the pool.
            self.commit[0].run()
        self.pool.close()
        if self.commit is not None:
            job, kind = self.commit[0], self.commit[2]
            self.commit = None
            err = job.finish()
            assert err is None or (kind == "sync" and isinstance(err, IOFailure)), repr(err)
        self._set_pool(Pool.open(self.paths, **self._factory()))
        self._all_durable()

    # -- after every step --------------------------------------------------------------------
    @invariant()
    def same_bytes(self):
        if not hasattr(self, "pool"):
            return
        pool = self.pool
        assert self._names() == sorted(pool.lds), f"LDs {sorted(pool.lds)} != model {self._names()}"
        for name, want in self.model.items():
            got = pool.get(name).read(0, len(want))
            if got != want:
                raise AssertionError(f"LD {name} (RAID{pool.get(name).raid}): {first_diff(got, bytes(want))}")

    @invariant()
    def structure(self):
        if not hasattr(self, "pool"):
            return
        pool = self.pool
        problems = check_pool(pool)
        fence = pool.space.fence
        if not self.reads:
            assert not fence.active, f"no read job in flight, yet the fence holds tokens {fence.active}"
            assert not fence.waiting, f"no read job in flight, yet {fence.waiting} frees wait behind the fence"
        # Frees waiting behind the fence are neither referenced, free nor in the journal:
        # the slot accounting holds only once they ran. A BGCOPY step in flight owns
        # allocated segments nothing refers to yet.
        if not fence.waiting and self.plan is None:
            problems += check_invariants(pool)
        assert not problems, "pool invariants violated:\n  " + "\n  ".join(problems)


ConcurrentMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("VSAND_CONCURRENT_EXAMPLES", "50")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestConcurrentModel = ConcurrentMachine.TestCase


class _Draw:
    """Stands in for hypothesis' data object where the machine picks by itself."""

    def __init__(self, values):
        self.values = list(values)

    def draw(self, strategy, label=None):
        return self.values.pop(0)


@pytest.mark.parametrize("how", ["cfw", "delete"])
def test_read_job_after_a_handover(tmp_path, how):
    """A read job of L resolved segment 0; then L's allocation passes to its snapshot
    S (a whole-segment write of L hands it over; deleting L hands it over), and S
    writes into it in place before the job reads. The job's bytes must not be taken
    for L's: it says it is not intact, and L read again returns its own bytes."""
    pool, _ = make_pool(tmp_path)
    lun = pool.create_ld("L", 4 * MiB, raid=0)
    lun.write(0, b"A" * SEG)
    snap = pool.snapshot("L", "S")
    job = lun.read_job(0, SEG)
    if how == "cfw":
        lun.write(0, b"B" * SEG)
    else:
        pool.delete_ld("L")
    snap.write(0, b"S" * 4096)
    got = bytes(job.run())
    job.done()
    assert got[:4096] in (b"A" * 4096, b"B" * 4096) or not job.intact(), \
        f"the read job of L returned S's write as intact: {got[:8]!r}"
    if how == "cfw":
        assert not job.intact() and lun.read(0, 4096) == b"B" * 4096
    pool.close()


def test_crash_after_a_write_into_a_handed_over_segment(tmp_path):
    """Trimming L hands its segment to its snapshot S (in memory); S writes a byte
    of it in place; kill -9 before any commit. L's committed map still owns the
    segment: L must read as before the trim (or as trimmed), never with S's byte."""
    pool, paths = make_pool(tmp_path)
    lun = pool.create_ld("L", 4 * MiB, raid=0)
    lun.write(0, b"A" * SEG)
    pool.snapshot("L", "S")
    lun.trim(0, SEG)
    pool.get("S").write(0, b"S")
    drop(pool)
    pool = Pool.open(paths)
    got = pool.get("L").read(0, SEG)
    pool.close()
    assert got in (b"A" * SEG, bytes(SEG)), f"L after the crash starts {got[:4]!r}"


def test_a_snapshot_that_unshares_keeps_its_committed_bytes_across_a_crash(tmp_path):
    """Found by this model in CI: a snapshot writes a whole segment it read through
    its LUN (it gets its own copy; the LUN's Sp bit is cleared in memory), then the
    LUN writes that segment in place, then the machine dies before a commit. The
    committed maps still have the snapshot reading the LUN's allocation, so the
    LUN's write must go to a new segment (a handover, cfw.redirect)."""
    paths = [os.path.join(str(tmp_path), f"d{i}.img") for i in range(8)]
    pool = Pool.create([(p, DRIVE, "default") for p in paths], Units(quorum=8 * MiB))
    a = pattern(1, 3 * SEG + 5)
    pool.create_ld("ld1", 4 * MiB, raid=0).write(0, a)
    pool.snapshot("ld1", "ld2")
    pool.flush()
    pool.get("ld2").write(0, pattern(2, SEG))
    pool.get("ld1").write(0, b"\x00")
    drop(pool)
    pool = Pool.open(paths)
    assert pool.get("ld2").read(0, SEG) == a[:SEG]
    assert pool.get("ld1").read(0, SEG) == a[:SEG]
    pool.flush()
    assert check_pool(pool) == []
    pool.close()
