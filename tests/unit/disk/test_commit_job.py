"""Commits whose drive I/O runs off the event loop (DESIGN.md §9, §13): between
``begin_commit`` and ``finish`` the loop goes on changing maps, and nothing it does
may be lost by, or wrongly covered by, the commit in flight."""

from __future__ import annotations

import os

from model.commit_faults import drop
from poolkit import make_pool
from vsand.disk.pool import Pool
from vsand.errors import IOFailure
from vsand.mapping.lmap import entry_rsd, entry_slot
from vsand.units import MiB

A = b"A" * MiB
B = b"B" * MiB


def test_map_changes_made_while_a_commit_runs_reach_the_next_one(tmp_path):
    pool, paths = make_pool(tmp_path)
    ld = pool.create_ld("lun", 16 * MiB, raid=0)
    ld.write(0, A)
    job = pool.begin_flush()
    assert job is not None and job.records
    ld.write(MiB, B)            # a new segment, mapped while the commit is written
    job.run()
    assert job.finish() is None
    pool.flush()                # the next commit must record segment 1
    drop(pool)
    pool = Pool.open(paths)
    ld = pool.lds["lun"]
    assert ld.read(0, MiB) == A
    assert ld.read(MiB, MiB) == B, "a segment mapped during a commit was lost"
    pool.close()


def test_a_failed_commit_keeps_its_changes_for_the_next(tmp_path):
    pool, paths = make_pool(tmp_path)
    ld = pool.create_ld("lun", 16 * MiB, raid=0)
    ld.write(0, A)
    job = pool.begin_flush()

    def no_sync():
        raise IOFailure("injected: the data sync failed")
    pool.sync_data = no_sync
    job.run()
    assert isinstance(job.finish(), IOFailure)
    assert not pool.journal.empty()
    del pool.sync_data
    pool.flush()
    drop(pool)
    pool = Pool.open(paths)
    assert pool.lds["lun"].read(0, MiB) == A
    pool.close()


def test_a_redundant_write_during_a_commit_gets_a_new_intent(tmp_path):
    """The commit in flight declares the RStores dirty when it was built clean
    (r5c). A write to one of them before that is durable must not be covered by
    it: the write waits for the commit and records a new intent, so a crash that
    tears it is repaired at the next start."""
    pool, paths = make_pool(tmp_path)
    ld = pool.create_ld("mirror", 8 * MiB, raid=1)
    ld.write(0, A)
    job = pool.begin_flush()
    assert job.covered, "the commit should declare the written RStore clean"
    ld.write(0, B)
    assert pool.tx.inflight is None and job.finish() is None
    assert pool.tx.dirty, "the write after the commit has no intent"
    # The crash lets one copy of the write reach its drive and not the other.
    e = ld.l2.get(0)
    members = pool.space.members(ld.table, entry_rsd(e))
    d, base = members[1]
    off = base + entry_slot(e) * pool.units.stripe_unit
    fd = os.open(paths[d], os.O_WRONLY)
    os.pwrite(fd, A[:pool.units.stripe_unit], off)
    os.close(fd)
    drop(pool)
    pool = Pool.open(paths)
    ld = pool.lds["mirror"]
    e = ld.l2.get(0)
    assert pool.rio.consistent(1, pool.space.members(ld.table, entry_rsd(e)), entry_slot(e)), \
        "the torn mirror was not resynced"
    pool.close()


def test_a_log_append_failing_in_the_worker_is_repaired_on_the_loop(tmp_path):
    """The append fails in ``run`` (a worker thread in the daemon); ``finish``
    rewrites the metadata from memory, which makes the commit durable after all."""
    pool, paths = make_pool(tmp_path)
    ld = pool.create_ld("lun", 16 * MiB, raid=0)
    ld.write(0, A)
    job = pool.begin_flush()
    real = pool.meta.append

    def failing(records):
        pool.meta.append = real
        pool.meta.stale = True           # what a failed copy leaves behind
        raise IOFailure("injected: a log copy failed")
    pool.meta.append = failing
    job.run()
    assert isinstance(job.error, IOFailure)
    assert job.finish() is None, "the rewrite should have made the commit durable"
    assert pool.tx.failure() is None and pool.journal.empty()
    drop(pool)
    pool = Pool.open(paths)
    assert pool.lds["lun"].read(0, MiB) == A
    pool.close()
