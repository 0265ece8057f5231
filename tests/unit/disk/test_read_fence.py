"""Reads whose drive I/O runs off the event loop (DESIGN.md §13): a read job
resolved before a free must still read what it resolved, because the free waits
for it (disk/fence.py); and the epochs order frees behind exactly the reads that
began before them."""

from __future__ import annotations

import os

from poolkit import make_pool
from vsand.disk.fence import ReadFence
from vsand.errors import NoSpace
from vsand.physical import readjob
from vsand.units import MiB

A = b"A" * MiB
B = b"B" * MiB


class NoWaitReads:
    """Counts the no-wait reads (``tried``) and makes them miss while ``miss`` is
    set; the skip heuristic starts from nothing."""

    def __init__(self, monkeypatch):
        self.tried: list[int] = []
        self.miss = False
        real = os.preadv

        def counted(fd, bufs, off, flags=0):
            if flags & readjob.NOWAIT:
                self.tried.append(off)
                if self.miss:
                    raise BlockingIOError(11, "would block")
            return real(fd, bufs, off, flags)
        monkeypatch.setattr(readjob.os, "preadv", counted)
        monkeypatch.setattr(readjob.ReadJob, "missed", 0)
        monkeypatch.setattr(readjob.ReadJob, "skip", 0)


def fill(ld, start: int) -> int:
    """Writes segments of ``ld`` from ``start`` until the pool is full; returns the
    next segment number."""
    k = start
    while True:
        try:
            ld.write(k * MiB, B)
        except NoSpace:
            return k
        k += 1


def reuse_race(tmp_path, fenced: bool) -> tuple[bytes, bool]:
    """A full pool: a job resolves LD a's segment 0, a trims it and the commits
    free its slot, RStore and PSEGs; then LD b, which filled the pool, writes one
    more segment — only the freed space can take it. Returns what the job read
    and whether b's write found room."""
    pool, _ = make_pool(tmp_path, size=48 * MiB)
    a = pool.create_ld("a", 8 * MiB, raid=0)
    b = pool.create_ld("b", 1024 * MiB, raid=0)
    a.write(0, A)
    pool.flush()
    k = fill(b, 0)
    pool.flush()
    job = a.read_job(0, MiB)
    assert job is not None and not job.holes and job.pieces
    if not fenced:
        job.done()                 # what a server without the fence would do
    a.trim(0, MiB)
    pool.flush()                   # the commit that frees the slot (and drops the RStore)
    pool.flush()                   # the next one returns the RStore's PSEGs
    if fenced:
        assert pool.space.fence.waiting >= 1, "the free did not wait for the read"
    room = fill(b, k) > k
    pool.flush()
    got = bytes(job.run())
    job.done()
    assert pool.space.fence.waiting == 0 and not pool.space.fence.active
    if fenced:                     # the space came back with the end of the read
        pool.flush()
        pool.flush()
        assert fill(b, k) > k, "the space freed behind the read never came back"
    assert a.read(0, MiB) == bytes(MiB)
    pool.close()
    return got, room


def test_a_free_waits_for_the_reads_that_resolved_it(tmp_path):
    assert reuse_race(tmp_path, fenced=True) == (A, False)


def test_without_the_fence_the_read_sees_another_ld(tmp_path):
    """The negative control: the scenario above does reuse the space."""
    assert reuse_race(tmp_path, fenced=False) == (B, True)


def test_epochs_free_behind_older_reads_only():
    f = ReadFence()
    ran = []
    r1 = f.begin()
    f.after_reads(lambda: ran.append("x"))     # waits for r1
    r2 = f.begin()                             # began after x was asked: x does not wait for it
    f.after_reads(lambda: ran.append("y"))     # waits for r1 and r2
    assert ran == []
    f.end(r1)
    assert ran == ["x"]
    r3 = f.begin()
    f.end(r2)
    assert ran == ["x", "y"]
    f.after_reads(lambda: ran.append("z"))     # r3 still runs
    assert ran == ["x", "y"]
    f.end(r3)
    assert ran == ["x", "y", "z"] and not f.active and not f.waiting
    f.after_reads(lambda: ran.append("now"))   # nothing runs: at once
    assert ran[-1] == "now"


def test_cold_reads_take_the_worker_path_and_read_right(tmp_path, monkeypatch):
    """After the page cache dropped the drives' pages, try_now leaves pieces for
    run(), which reads them. Where the drop does not take (tmpfs, overlays), the
    kernel's EAGAIN is given by hand so the worker path is still what runs."""
    pool, paths = make_pool(tmp_path)
    a = pool.create_ld("a", 8 * MiB, raid=5)
    data = os.urandom(3 * MiB)
    a.write(MiB // 2, data)
    pool.flush()
    for d in pool.drives.values():
        os.posix_fadvise(d.fd, 0, 0, os.POSIX_FADV_DONTNEED)
    job = a.read_job(MiB // 2, 3 * MiB)
    if job.try_now():
        job.done()
        real = os.preadv

        def not_cached(fd, bufs, off, flags=0):
            if flags & readjob.NOWAIT:
                raise BlockingIOError(11, "would block")
            return real(fd, bufs, off, flags)
        monkeypatch.setattr(readjob.os, "preadv", not_cached)
        job = a.read_job(MiB // 2, 3 * MiB)
        assert not job.try_now()
        monkeypatch.undo()
    assert job.pieces
    assert bytes(job.run()) == data
    job.done()
    # The misses made the next reads skip the no-wait attempt (see the next test);
    # once they are through, the cached data is read without a worker.
    for _ in range(readjob.ReadJob.skip):
        skipped = a.read_job(MiB // 2, 4096)
        assert not skipped.try_now() and skipped.pieces
        skipped.done()
    again = a.read_job(MiB // 2, 3 * MiB)
    assert again.try_now() and bytes(again.buf) == data
    again.done()
    pool.close()


def test_a_run_of_misses_skips_the_no_wait_attempt_for_a_while(tmp_path, monkeypatch):
    """A no-wait read that misses costs the loop the start of the kernel's read:
    after MISSES misses in a row the next SKIP reads go straight to the slow path,
    then the page cache is tried again; a hit ends a run of misses."""
    pool, _ = make_pool(tmp_path)
    a = pool.create_ld("a", 8 * MiB, raid=0)
    a.write(0, os.urandom(MiB))
    pool.flush()
    nw = NoWaitReads(monkeypatch)
    tried = nw.tried

    def read() -> bool:
        job = a.read_job(0, 4096)
        try:
            return job.try_now()
        finally:
            job.done()

    nw.miss = True
    for _ in range(readjob.MISSES - 1):
        assert not read()
    nw.miss = False
    assert read()                          # a hit: the run starts again
    nw.miss = True
    for _ in range(readjob.MISSES):
        assert not read()
    assert len(tried) == 2 * readjob.MISSES
    for _ in range(readjob.SKIP):
        assert not read()                  # not tried at all
    assert len(tried) == 2 * readjob.MISSES
    nw.miss = False
    assert read() and len(tried) == 2 * readjob.MISSES + 1
    pool.close()


def test_read_now_serves_a_cached_piece_at_once_and_tries_the_cache_once(tmp_path, monkeypatch):
    """``read_now``: a read of one drive piece that the page cache holds comes back
    as its bytes, with nothing fenced; one that misses comes back as a job that does
    not try the cache a second time (a miss costs the loop the start of the kernel's
    read); a hole, a read over two segments and a run of misses being skipped come
    back as jobs whose ``try_now`` behaves as before."""
    pool, _ = make_pool(tmp_path)
    a = pool.create_ld("a", 8 * MiB, raid=0)
    data = os.urandom(2 * MiB)
    a.write(0, data)
    pool.flush()
    fence = pool.space.fence
    nw = NoWaitReads(monkeypatch)
    tried = nw.tried

    got = a.read_now(4096, 8192)
    assert type(got) is bytearray and bytes(got) == data[4096:12288]
    assert len(tried) == 1 and not fence.active

    nw.miss = True
    job = a.read_now(8192, 4096)
    assert isinstance(job, readjob.ReadJob) and fence.active
    assert not job.try_now() and len(tried) == 2        # not tried again
    assert bytes(job.run()) == data[8192:12288]
    job.done()
    assert readjob.ReadJob.missed == 1

    nw.miss = False
    hole = a.read_now(4 * MiB, 4096)
    assert hole.holes and hole.try_now() and bytes(hole.buf) == bytes(4096)
    hole.done()
    two = a.read_now(MiB - 4096, 8192)                   # over two segments: a job
    assert isinstance(two, readjob.ReadJob) and two.try_now()
    assert bytes(two.buf) == data[MiB - 4096:MiB + 4096]
    two.done()

    monkeypatch.setattr(readjob.ReadJob, "skip", 2)
    n = len(tried)
    skipped = a.read_now(0, 4096)
    assert isinstance(skipped, readjob.ReadJob) and len(tried) == n
    assert not skipped.try_now() and readjob.ReadJob.skip == 1   # skipped once, by the job
    skipped.done()
    assert not fence.active
    pool.close()
