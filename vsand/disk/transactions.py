"""Transactions (DESIGN.md §9): commits, checkpoints, write intents, and what a
failed metadata write does to the pool.

A commit is one unit in the metadata log (meta/format.py): the journal's records
(ops.py) plus, for a catalog operation, that operation's record. Steps: fsync the
data drives, append the unit to every quorum copy; only then is the journal
forgotten and what it freed released. The superblock and checkpoint are rewritten
when the log is half full, on close, whenever the log's state is in doubt, and in
place of a commit too big to pack in memory (BIG_COMMIT: a checkpoint is written
from the arrays in pieces, a commit is one bytes object).

A failed metadata write leaves the copies in a state nobody knows (a commit may
be whole on one copy and torn on the next). The pool then rewrites its metadata
from memory at once (a checkpoint: new blob, new superblock generation, a new
log); if that works, memory and disk agree again and only the operation that
hit the error failed (a catalog operation was never applied; a plain commit is
durable through the checkpoint). If it fails too, the pool turns read-only:
``needs_check`` goes to whatever superblock copies still take it, every change is
refused with PoolReadOnly, reads go on, and the next start checks the pool.
Nothing is ever appended to a log whose state is in doubt, so a later commit can
never make the pool unopenable. A failed data sync changes no metadata: the
commit fails, the journal stays, the next commit tries again.
"""

from __future__ import annotations

import logging
import math
import threading

from ..errors import IOFailure, NoSpace, PoolReadOnly, VsanError
from ..faults import crashpoint
from ..meta import format as fmt
from ..meta.store import LogFull, MetaStore
from ..units import format_size
from . import recovery

log = logging.getLogger("vsand.pool")

CHECKPOINT_AT = 0.5   # fraction of the log area in use that triggers a checkpoint
BIG_COMMIT = 1 << 20  # a change set whose commit would take more memory is checkpointed
COPIES_RESERVED = 3    # checkpoint copies the metadata reserve holds (ensure_meta_reserve)


class Transactions:
    def __init__(self, pool, meta: MetaStore, sb: dict):
        self.pool = pool
        self.meta = meta
        self.ckpt: dict | None = sb.get("ckpt")
        self.log_start = (sb.get("log_seq", 1), sb.get("log_salt", 0))
        self.needs_check: str | None = sb.get("needs_check")
        self.dirty: set[tuple[tuple[int, str], int]] = set()   # RStores with a write intent
        self.failed: str | None = None
        self.orphans: list = []        # checkpoint PSEGs a failed superblock write may name
        self.commits = 0
        self.inflight: CommitJob | None = None   # a commit whose drive I/O may be running

    # ---- state ----------------------------------------------------------------------
    def failure(self) -> PoolReadOnly | None:
        if self.failed is None:
            return None
        return PoolReadOnly(f"pool is read-only: {self.failed}; restart vsand, which checks the pool")

    def writable(self) -> None:
        err = self.failure()
        if err is not None:
            raise err

    def superblock(self, ckpt: dict | None, log_seq: int, salt: int,
                   needs_check: str | None = None, log_end: int | None = None) -> dict:
        p = self.pool
        body = {"ver": fmt.FORMAT_VERSION, "pool": p.pool_uuid, "units": p.units.to_dict(),
                "drives": [p.drive_recs[i] for i in sorted(p.drive_recs)],
                "rss": p.allocator.rss, "quorum": p.quorum_ids, "ckpt": ckpt,
                "log_seq": log_seq, "log_salt": salt}
        if needs_check:
            body["needs_check"] = needs_check
        if log_end is not None:
            body["log_end"] = log_end
        return body

    # ---- commit ---------------------------------------------------------------------
    def commit(self, extra: dict | None = None) -> None:
        """Makes every change so far durable, with ``extra`` (a catalog operation's
        record, not yet applied) last. Raises when that is not done; ``extra`` is
        then not on disk and must not be applied."""
        job = self.begin_commit(extra)
        if job is not None:
            job.run()
            err = job.finish()
            if err is not None:
                raise err

    def begin_commit(self, extra: dict | None = None) -> "CommitJob | None":
        """Builds the next commit on the loop; its drive I/O (the data sync, the log
        append) is ``run``, which may go to a worker thread while the loop serves
        other requests, and ``finish`` completes it on the loop. None when it was
        done here already (a big change set is checkpointed instead)."""
        self.join()
        self.writable()
        pool, j, alloc = self.pool, self.pool.journal, self.pool.allocator
        if extra is None and j.empty() and not alloc.pending:
            return CommitJob(self, None, None, frozenset(), 0, None)     # a data sync only
        # A commit is packed whole in memory, a checkpoint streams from the arrays: a
        # big change set (a thick create's allocation) would cost more RAM than its maps.
        if j.estimate(pool.catalog.by_id) > BIG_COMMIT:
            pool.sync_data()             # raises with nothing written
            crashpoint("commit.after_data_sync")
            self._checkpoint_instead(extra, synced=True)
            return None
        records, mark = j.build(pool.catalog.by_id)
        # A write in flight to a redundant RStore may be torn by a crash after this
        # commit: its RStore must stay dirty, so none is declared clean this time.
        covered = frozenset(self.dirty) if not pool.stripes.redundant else frozenset()
        if covered:
            records.append({"t": "r5c"})
        if extra is not None:
            records.append(extra)
        self.inflight = CommitJob(self, records, mark, covered, len(alloc.pending), extra)
        self.inflight.handed = frozenset(pool.space.handed)
        return self.inflight

    def join(self) -> None:
        """Waits for the commit in flight, if any. The log has one writer, and an
        RStore the commit declares clean must not be written before that is durable
        (its next write needs a new intent), so whatever appends to the log or
        writes a redundant RStore comes here first."""
        job = self.inflight
        if job is not None:
            job.finish()          # its outcome goes to its own waiters

    def finish_commit(self, job: "CommitJob") -> BaseException | None:
        """On the loop, once ``job`` ran: applies its outcome; the error its waiters
        get, or None."""
        if self.inflight is job:
            self.inflight = None
        err = job.error
        if job.records is None:
            return err
        j = self.pool.journal
        if err is None:
            self.dirty -= job.covered
            self.pool.space.handed -= job.handed     # their new owners may write in place now
            self._release(j.committed(job.mark), job.npsegs)
            self.commits += 1
            if job.extra is None:
                try:
                    self.checkpoint_if_due()
                except VsanError as e:
                    return e
            return None
        j.restore(job.mark)
        if not job.synced or not isinstance(err, (LogFull, IOFailure)):
            return err           # nothing written: the journal stays for the next commit
        try:
            if isinstance(err, LogFull):
                # The loop may have written since the sync: the checkpoint syncs again.
                self._checkpoint_instead(job.extra, synced=False)
                return None
            self.rewrite(err, "metadata commit")
        except VsanError as e:
            return e
        if job.extra is not None:
            return IOFailure(f"metadata commit failed ({err.message}); the operation was not done")
        return None              # the checkpoint made it all durable

    def _checkpoint_instead(self, extra: dict | None, synced: bool) -> None:
        """A checkpoint makes the change set durable; ``extra``, which memory has not
        got yet, follows as the new log's first commit. ``synced``: the data was
        synced just now and nothing written since (a failed sync raised there, with
        nothing written and the pool writable)."""
        self.checkpoint(synced=synced)
        if extra is not None:
            self._append([extra], "commit")

    def checkpoint_if_due(self) -> None:
        """Checkpoints when the log is half full. After a catalog operation this runs
        once the operation is applied, or the checkpoint would miss it."""
        if self.meta.log_off > self.meta.log_size * CHECKPOINT_AT:
            self.checkpoint()

    def intend(self, table, idx: int) -> None:
        """Write intent: a redundant RStore is marked dirty durably before its first
        write since the last commit, so start-up resyncs it if we crash mid-write."""
        if table.raid == 0:
            return
        if self.inflight is not None:
            self.join()
        key = ((table.raid, table.ldad), idx)
        if key in self.dirty:
            return
        self.writable()
        self._append([{"t": "r5d", "raid": table.raid, "ldad": table.ldad, "i": idx}], "write intent")
        self.dirty.add(key)

    def _append(self, records: list[dict], what: str) -> None:
        """Appends records that must be durable now. After a failed write the
        metadata is rewritten and the append tried once more; a second failure
        turns the pool read-only."""
        try:
            self.meta.append(records)
            return
        except LogFull:
            self.checkpoint()
        except IOFailure as e:
            self.rewrite(e, what)
        try:
            self.meta.append(records)
        except (LogFull, IOFailure) as e:
            self.fail(f"{what} failed twice ({e})")
            raise self.failure() from None

    def _release(self, freed, npsegs: int) -> None:
        self.pool.allocator.release_pending(npsegs)
        self.pool.space.release_committed(*freed)

    # ---- checkpoint -----------------------------------------------------------------
    def checkpoint(self, synced: bool = False) -> None:
        self.join()
        self.writable()
        try:
            self.checkpoint_now(synced)
        except VsanError as e:
            self.rewrite(e, "checkpoint")

    def checkpoint_now(self, synced: bool = False) -> None:
        """Writes all of memory as a new checkpoint and superblock; the log restarts.
        Raises (memory unchanged) when it cannot. ``synced``: the caller just synced
        the data and nothing was written since."""
        self.join()
        j = self.pool.journal
        mark = j.mark()
        try:
            npsegs = self._write_checkpoint(synced)
        except BaseException:
            j.restore(mark)
            raise
        self._release(j.committed(mark), npsegs)

    def _write_checkpoint(self, synced: bool) -> int:
        pool = self.pool
        npsegs = len(pool.allocator.pending)
        if not synced:
            pool.sync_data()
        seq, salt = self.meta.next_seq, MetaStore.new_salt()
        # Written from the live arrays in one pass (no map changes before it returns:
        # this runs where the maps are changed), never packed whole in memory.
        blob = fmt.CheckpointBlob(seq, recovery.checkpoint_body(pool, seq))
        p, q = pool.units.pseg, pool.units.quorum
        n = max(1, math.ceil(blob.nbytes / p))
        copies = []
        try:
            for d in pool.quorum_ids:
                if not pool.drives[d].failed:
                    copies.append([d, pool.allocator.alloc_meta(d, n)])
            MetaStore.write_blobs([(pool.drives[d], [q + g * p for g in psegs]) for d, psegs in copies],
                                  p, blob.pieces(), blob.head)
        except VsanError:
            for d, psegs in copies:      # no superblock names them: free at once
                for g in psegs:
                    pool.allocator.free_now(d, g)
            raise
        crashpoint("checkpoint.before_superblock")
        new = {"seq": seq, "len": blob.nbytes, "copies": copies}
        try:
            self.meta.write_superblock(self.superblock(new, seq, salt))
        except VsanError:
            self.orphans += copies       # a copy may name them: never reuse before restart
            raise
        crashpoint("checkpoint.after_superblock")
        self.meta.reset_log(seq, salt)
        self.log_start = (seq, salt)
        self.needs_check = None
        old, self.ckpt = self.ckpt, new
        for d, psegs in (old["copies"] if old else []) + self.orphans:
            for g in psegs:
                pool.allocator.free_now(d, g)
        self.orphans = []
        self.dirty.clear()
        pool.space.handed.clear()
        return npsegs

    # ---- failure --------------------------------------------------------------------
    def rewrite(self, err: VsanError, what: str) -> None:
        """``what`` failed with ``err`` and the metadata on disk is in doubt: rewrite it
        whole from memory (twice at most), or turn the pool read-only and raise."""
        log.warning("%s failed: %s; rewriting the pool's metadata from memory", what, err.message)
        last = err
        for _ in range(2):
            try:
                self.checkpoint_now()
                log.warning("metadata rewritten after the failed %s; the pool goes on", what)
                return
            except VsanError as e:
                last = e
        self.fail(f"{what} failed ({err.message}) and rewriting the metadata failed too "
                  f"({last.message})")
        raise self.failure() from None

    def fail(self, why: str) -> None:
        """Turns the pool read-only and tries to leave ``needs_check`` on disk."""
        if self.failed is not None:
            return
        self.join()
        self.failed = why
        log.error("the pool turns read-only: %s", why)
        seq, salt = self.log_start
        # ``log_end``: replay stops before the commit that failed. A write reported
        # as failed may still have reached the drive, and the operation it carried
        # was reported as not done: it must not come back at the next start.
        try:
            n = self.meta.write_superblock_each(self.superblock(self.ckpt, seq, salt, why,
                                                                self.meta.next_seq))
        except VsanError:
            n = 0
        if not n:
            log.error("needs_check could not be written to any quorum drive")
        for ld in self.pool.catalog.by_id.values():
            ld.refresh()

    # ---- the metadata reserve ---------------------------------------------------------
    def ensure_meta_reserve(self, extra: int = 0) -> None:
        """Keeps enough PSEGs on each quorum drive for the next checkpoint and its
        rewrites, so a full pool can still commit and survive a failed commit. ``extra`` segments are about to be added to LDs."""
        pool = self.pool
        alloc = pool.allocator
        segs = extra + pool.catalog.total_segments()
        total_psegs = sum(d.npsegs for d in alloc.drives.values())
        need = 4 * segs + 4 * total_psegs + 64 * 1024 + 2 * 1024 * len(pool.catalog)
        # Room for three copies beside the current one: a checkpoint whose superblock
        # write fails leaves its copy named by a slot that may have reached the drive
        # (an orphan, kept until the next good checkpoint), and the rewrite that
        # follows is tried twice: a full pool must still get through both.
        n = COPIES_RESERVED * (math.ceil(need / pool.units.pseg) + 1)
        # The current checkpoint copy counts: the first checkpoint of a pool that
        # filled up before it took its PSEGs out of the reserve, and the next
        # checkpoint gives them back.
        held: dict[int, int] = {}
        for d, psegs in (self.ckpt or {}).get("copies", []):
            held[d] = held.get(d, 0) + len(psegs)
        for d in pool.quorum_ids:
            ds = alloc.drives[d]
            if ds.failed:
                continue
            if ds.free + held.get(d, 0) < n:
                p = pool.units.pseg
                raise NoSpace(f"drive {d} cannot hold the metadata reserve for this size: it needs "
                              f"{format_size(n * p)}, {format_size((ds.free + held.get(d, 0)) * p)} is free")
        for d in pool.quorum_ids:
            alloc.set_reserve(d, n)


class CommitJob:
    """One commit between ``begin_commit`` and ``finish_commit``. ``run`` does its
    drive I/O and touches nothing else (drives, the log's write position), so it
    may run in a worker thread; ``finish`` (on the loop, any number of times)
    waits for it and applies the outcome once. Whoever comes first runs it: a
    ``finish`` that finds it not started (queued behind busy workers) runs it
    itself rather than wait for a thread. ``records`` None: a data sync only."""

    __slots__ = ("tx", "records", "mark", "covered", "npsegs", "extra", "synced", "error",
                 "handed", "_claim", "_ran", "_done", "_result")

    def __init__(self, tx, records, mark, covered, npsegs, extra):
        self.tx, self.records, self.mark, self.covered = tx, records, mark, covered
        self.npsegs, self.extra = npsegs, extra
        self.synced = False
        self.handed: frozenset = frozenset()     # handovers this commit makes durable
        self.error: BaseException | None = None
        self._claim = threading.Lock()
        self._ran = threading.Event()
        self._done = False
        self._result: BaseException | None = None

    def run(self) -> None:
        if not self._claim.acquire(blocking=False):
            return                       # running or ran already
        try:
            self.tx.pool.sync_data()
            self.synced = True
            crashpoint("commit.after_data_sync")
            if self.records is not None:
                self.tx.meta.append(self.records)
        except BaseException as e:  # noqa: BLE001 (handed to the loop by finish)
            self.error = e
        finally:
            self._ran.set()

    def finish(self) -> BaseException | None:
        self.run()
        self._ran.wait()
        if not self._done:
            self._done = True
            self._result = self.tx.finish_commit(self)
        return self._result
