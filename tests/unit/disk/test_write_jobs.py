"""Writes whose drive I/O runs off the event loop (DESIGN.md §13): one job at a
time per stripe, in arrival order; map work that could move or rewrite what a
job writes waits for it (drain); a commit never declares clean an RStore a job
is still writing."""

from __future__ import annotations

import threading

from poolkit import make_pool
from vsand.mapping.lmap import entry_rsd, entry_slot
from vsand.units import MiB

A = b"A" * 4096
B = b"B" * 4096


def jobs_pool(tmp_path):
    pool, paths = make_pool(tmp_path)
    pool.write_jobs = True          # as with direct drives
    return pool, paths


def started(job) -> list:
    got = []
    job.when_ready(lambda: got.append(job))
    return got


def test_jobs_on_one_stripe_run_one_at_a_time_in_order(tmp_path):
    pool, _ = jobs_pool(tmp_path)
    ld = pool.create_ld("m", 16 * MiB, raid=1)
    j1 = ld.write_job(0, A)
    j2 = ld.write_job(100, B)          # same segment: same stripe
    j3 = ld.write_job(4 * MiB, B)      # another segment
    s1, s2, s3 = started(j1), started(j2), started(j3)
    assert s1 and s3 and not s2, "the second job on a stripe started before the first ended"
    j1.run()
    j1.done()
    assert s2, "the job waiting for the stripe was not started when it was free"
    for j in (j2, j3):
        j.run()
        j.done()
    assert ld.read(0, 100) == A[:100] and ld.read(100, 4096) == B
    assert not pool.stripes.jobs and not pool.stripes.queues
    e = ld.l2.get(0)
    assert pool.rio.consistent(1, pool.space.members(ld.table, entry_rsd(e)), entry_slot(e))
    pool.close()


def test_a_job_over_two_stripes_waits_for_both(tmp_path):
    pool, _ = jobs_pool(tmp_path)
    ld = pool.create_ld("r5", 16 * MiB, raid=5)
    a = ld.write_job(MiB - 4096, A)
    b = ld.write_job(MiB, A)
    both = ld.write_job(MiB - 2048, B)     # the end of segment 0, the start of segment 1
    sb = started(both)
    for j in (b, a):
        assert not sb
        j.run()
        j.done()
    assert sb
    both.run()
    both.done()
    assert ld.read(MiB - 4096, 8192) == A[:2048] + B + A[2048:]
    pool.close()


def test_catalog_operations_and_trims_wait_for_jobs(tmp_path):
    """A snapshot taken while a job is queued must see the write whole (the job
    is run first), and a trim must not race a job on the segment it frees."""
    pool, _ = jobs_pool(tmp_path)
    ld = pool.create_ld("lun", 16 * MiB, raid=1)
    j = ld.write_job(0, A)
    pool.snapshot("lun", "snap")          # runs the queued job before sharing
    assert not pool.stripes.jobs
    j.done()                               # its owner's completion comes later: nothing left
    assert pool.lds["snap"].read(0, 4096) == A
    j2 = ld.write_job(8 * MiB, B)
    ld.trim(8 * MiB, MiB)
    assert j2.error is None and not pool.stripes.jobs
    assert ld.read(8 * MiB, 4096) == bytes(4096)
    pool.close()


def test_a_commit_leaves_rstores_with_jobs_in_flight_dirty(tmp_path):
    pool, _ = jobs_pool(tmp_path)
    ld = pool.create_ld("m", 16 * MiB, raid=1)
    j = ld.write_job(0, A)
    job = pool.begin_flush()
    assert not job.covered, "a commit declared clean an RStore a job is writing"
    job.run()
    assert job.finish() is None and pool.tx.dirty
    t = threading.Thread(target=j.run)
    t.start()
    t.join()
    j.done()
    ld.write(8 * MiB, B)                  # a map change, so the next commit has records
    job = pool.begin_flush()
    assert job.covered
    job.run()
    assert job.finish() is None and not pool.tx.dirty
    pool.close()


def test_buffered_pools_write_at_once(tmp_path):
    pool, _ = make_pool(tmp_path)
    assert not pool.write_jobs
    ld = pool.create_ld("lun", 16 * MiB, raid=0)
    assert ld.write_job(0, A) is None
    assert ld.read(0, 4096) == A
    pool.close()
