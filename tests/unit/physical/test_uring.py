"""Reads through io_uring (physical/uring.py, ReadJob.start): the bytes of the
file, pieces into their places, a short image's end as zeros, errors as
IOFailure, what the ring cannot take refused, and no memory kept per read.
Skipped with the reason where the kernel or the binding gives no ring."""

from __future__ import annotations

import os
import random
import select

import pytest

from poolkit import NoFence
from vsand.errors import IOFailure
from vsand.physical import uring
from vsand.physical.drive import Drive
from vsand.physical.readjob import ReadJob

KiB = 1 << 10
MiB = 1 << 20


class Runner:
    """A ring driven by hand: ``schedule`` keeps the submit for ``pump``."""

    def __init__(self):
        self.due = []
        self.ring, why = uring.Ring.open(self.due.append)
        if self.ring is None:
            pytest.skip(why)

    def pump(self, until) -> None:
        while not until():
            for fn in self.due:
                fn()
            self.due.clear()
            if until():
                return
            assert select.select([self.ring.fileno()], [], [], 10)[0], "no completion in 10 s"
            self.ring.reap()

    def close(self):
        self.pump(lambda: not self.ring.inflight)
        self.ring.close()


@pytest.fixture
def runner():
    r = Runner()
    yield r
    r.close()


@pytest.fixture
def image(tmp_path):
    data = random.Random(7).randbytes(4 * MiB)
    path = tmp_path / "d0.img"
    path.write_bytes(data)
    d = Drive.open(str(path), io="buffered")
    yield d, data
    d.close()


def read(runner, pieces, n):
    job = ReadJob(n, pieces, False, NoFence())
    got = []
    assert job.start(runner.ring, got.append)
    runner.pump(lambda: got)
    job.done()
    return got[0], bytes(job.buf)


def test_reads_the_bytes_of_the_file(runner, image):
    d, data = image
    rnd = random.Random(1)
    for _ in range(200):
        n = rnd.choice([1, 512, 4 * KiB, 64 * KiB, MiB])
        off = rnd.randrange(len(data) - n)
        err, got = read(runner, [(d, off, 0, n)], n)
        assert err is None and got == data[off:off + n]


def test_pieces_land_in_their_places(runner, image):
    d, data = image
    pieces = [(d, 3 * MiB, 0, 4 * KiB), (d, 100, 4 * KiB, 1000), (d, MiB + 7, 4 * KiB + 1000, 5000)]
    err, got = read(runner, pieces, 4 * KiB + 6000)
    assert err is None
    assert got == data[3 * MiB:3 * MiB + 4 * KiB] + data[100:1100] + data[MiB + 7:MiB + 5007]


def test_many_in_flight_at_once(runner, image):
    """More reads than the submission queue holds, all in flight together."""
    d, data = image
    jobs, got = [], []
    for i in range(3 * uring.ENTRIES):
        off = (i * 7919 * 512) % (len(data) - 4 * KiB)
        job = ReadJob(4 * KiB, [(d, off, 0, 4 * KiB)], False, NoFence())
        assert job.start(runner.ring, got.append)
        jobs.append((job, off))
    runner.pump(lambda: len(got) == len(jobs))
    assert got == [None] * len(jobs)
    for job, off in jobs:
        assert bytes(job.buf) == data[off:off + 4 * KiB]


def test_a_short_image_reads_as_zeros_past_its_end(runner, tmp_path):
    path = tmp_path / "short.img"
    path.write_bytes(b"x" * 5000)
    d = Drive.open(str(path), io="buffered")
    try:
        err, got = read(runner, [(d, 4096, 0, 8192)], 8192)
        assert err is None and got == b"x" * 904 + bytes(8192 - 904)
    finally:
        d.close()


def test_an_error_is_an_io_failure(runner, image):
    d, _ = image
    w = os.open(os.devnull, os.O_WRONLY)     # reading a write-only descriptor: EBADF
    try:
        bad = Drive(d.path, w, d.size, False)
        err, _ = read(runner, [(bad, 0, 0, 4 * KiB)], 4 * KiB)
        assert isinstance(err, IOFailure) and "Bad file descriptor" in str(err)
    finally:
        os.close(w)


def test_what_the_ring_cannot_take_is_refused(runner, image):
    d, _ = image

    class StandIn:
        direct = False
        failed = False

    for drive in (StandIn(), Drive(d.path, d.fd, d.size, False, direct=True)):
        job = ReadJob(4 * KiB, [(drive, 0, 0, 4 * KiB)], False, NoFence())
        assert not job.start(runner.ring, lambda err: None) and job.pieces
        job.done()
    d.failed = True
    job = ReadJob(4 * KiB, [(d, 0, 0, 4 * KiB)], False, NoFence())
    assert not job.start(runner.ring, lambda err: None)


def test_no_memory_is_kept_per_read(runner, image):
    """A binding that kept each read's buffer would grow by its size every read
    (it did with memoryviews: 4 KiB a read)."""
    d, _ = image

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    read(runner, [(d, 0, 0, 64 * KiB)], 64 * KiB)
    before = rss()
    for i in range(2000):
        read(runner, [(d, i * 512, 0, 64 * KiB), (d, 0, 64 * KiB, 100)], 64 * KiB + 100)
    assert rss() - before < 16 * MiB     # 2000 kept buffers would be 125 MiB


def test_without_the_binding_the_reason_is_given(monkeypatch):
    monkeypatch.setattr(uring, "L", None)
    monkeypatch.setattr(uring, "_missing", "No module named 'liburing'", raising=False)
    ring, why = uring.Ring.open(lambda fn: None)
    assert ring is None and "liburing" in why


def test_a_binding_that_crashes_the_process_is_found_in_a_child(monkeypatch):
    """A wheel built for instructions this CPU lacks dies with SIGILL at its first
    call, which no Python code could catch: open() tries it in a child first."""
    monkeypatch.setattr(uring, "_probed", None)
    monkeypatch.setattr(uring, "_PROBE", "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    if uring.L is None:
        monkeypatch.setattr(uring, "L", object())
    ring, why = uring.Ring.open(lambda fn: None)
    assert ring is None and "crashed" in why and "SIGILL" in why
    monkeypatch.setattr(uring, "_probed", None)
    monkeypatch.setattr(uring, "_PROBE", "raise OSError(38, 'Function not implemented')\n")
    ring, why = uring.Ring.open(lambda fn: None)
    assert ring is None and "Function not implemented" in why
