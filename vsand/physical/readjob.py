"""A read whose drive I/O may run off the event loop (DESIGN.md §13).

The caller resolves the map on the loop into pieces (drive, byte offset, offset
in the result, length); ``try_now`` reads what the page cache already holds
without blocking (``RWF_NOWAIT``), ``run`` reads the rest and may block, so it is
what a worker thread runs (``preadv`` releases the GIL). A direct (O_DIRECT) drive
has no page cache: a no-wait read of it would wait for the device on the loop, so
its pieces always go to ``run``. ``start`` is ``run`` through an io_uring
(uring.py): the kernel reads while the loop goes on, and the job calls back when
all its pieces have landed. ``done`` is called once,
whatever happened: it ends the job's hold on ``fence`` (the storage layer's
read fence, begun when the job was made) so that what it resolved may be freed.
"""

from __future__ import annotations

import errno
import os

from ..errors import IOFailure
from .drive import Drive

NOWAIT = getattr(os, "RWF_NOWAIT", 0)
# A no-wait read that misses is not free: the kernel starts reading the page
# before it says EAGAIN, on the loop's thread (measured: cold 4K random reads at
# QD32 went from 12k to 20k/s without it). After MISSES misses in a row, the next
# SKIP reads go straight to the slow path; then the cache is tried again.
MISSES = 4
SKIP = 64


def _nowait(drive, buf, off: int) -> int | None:
    """Bytes of ``buf`` read from the page cache without blocking (0: not cached);
    None when the kernel or file system refuses RWF_NOWAIT, which is then not tried
    again."""
    try:
        return os.preadv(drive.fd, [buf], off, NOWAIT)
    except BlockingIOError:
        return 0
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            ReadJob.nowait = False
            return None
        raise IOFailure(f"read {drive.path}@{off}: {e.strerror}") from e


def read_cached(drive, off: int, n: int) -> bytearray | bool:
    """The ``n`` bytes at ``off`` of ``drive`` if the page cache holds them all,
    read without blocking on the caller's thread (the event loop's). Else whether
    the cache was tried (True: it missed, so a ReadJob should not try again; False:
    not tried, as ``try_now`` would not have: a drive with a path of its own, no
    RWF_NOWAIT, or a run of misses being skipped)."""
    if not ReadJob.nowait or ReadJob.skip or type(drive) is not Drive or drive.failed \
            or drive.direct:
        return False
    buf = bytearray(n)
    got = _nowait(drive, buf, off)
    if got is None:
        return False
    if got < n:              # not all cached (or a short image's end): a ReadJob reads it
        ReadJob.miss()
        return True
    ReadJob.missed = 0
    return buf


class ReadJob:
    __slots__ = ("buf", "pieces", "holes", "_fence", "_token", "_moves", "_left", "_err",
                 "_landed", "_tried")

    nowait = bool(NOWAIT)      # cleared for good when the kernel or file system refuses it
    missed = 0                 # no-wait reads in a row that missed
    skip = 0                   # reads left that do not try

    def __init__(self, n: int, pieces: list, holes: bool, fence, tried: bool = False):
        self.buf = bytearray(n)          # holes stay zero
        self.pieces = pieces
        self.holes = holes
        self._tried = tried              # read_cached missed already: try_now does not retry
        self._fence = fence
        self._token = fence.begin()
        self._moves = fence.moves

    def try_now(self) -> bool:
        """Reads every piece the page cache holds; True when nothing is left."""
        if not ReadJob.nowait or self._tried:
            return not self.pieces
        if ReadJob.skip:
            ReadJob.skip -= 1
            return not self.pieces
        mv = memoryview(self.buf)
        left = []
        for drive, off, bo, k in self.pieces:
            if type(drive) is not Drive or drive.failed or drive.direct:
                left.append((drive, off, bo, k))     # a stand-in, wrapped or direct drive: its own path
                continue
            got = _nowait(drive, mv[bo:bo + k], off) or 0
            if got < k:                  # not cached (or a short image's end): the slow path
                left.append((drive, off + got, bo + got, k - got))
                ReadJob.miss()
            else:
                ReadJob.missed = 0
        self.pieces = left
        return not left

    @staticmethod
    def miss() -> None:
        ReadJob.missed += 1
        if ReadJob.missed >= MISSES:
            ReadJob.missed, ReadJob.skip = 0, SKIP

    def run(self) -> bytearray:
        mv = memoryview(self.buf)
        for drive, off, bo, k in self.pieces:
            drive.readinto(off, mv[bo:bo + k])
        self.pieces = []
        return self.buf

    def start(self, ring, landed) -> bool:
        """Hands the pieces ``try_now`` left to ``ring``, whose completions call
        ``landed(error or None)`` once all of them are in; False (nothing started)
        when a piece needs ``run``: a stand-in, failed or direct drive (O_DIRECT
        needs aligned memory, which the ring's binding cannot take)."""
        pieces = self.pieces
        for drive, _, _, _ in pieces:
            if type(drive) is not Drive or drive.failed or drive.direct:
                return False
        self._left = len(pieces)
        self._err = None
        self._landed = landed
        self.pieces = []
        for drive, off, bo, k in pieces:
            self._read(ring, drive, off, bo, k)
        return True

    def _read(self, ring, drive: Drive, off: int, bo: int, k: int) -> None:
        # The binding reads into whole bytearrays only: a piece that is not the
        # whole buffer lands in its own and is copied over.
        into = self.buf if k == len(self.buf) else bytearray(k)
        ring.read(drive.fd, into, off, lambda res: self._in(ring, drive, off, bo, into, res))

    def _in(self, ring, drive: Drive, off: int, bo: int, into: bytearray, res: int) -> None:
        if res > 0 and into is not self.buf:
            self.buf[bo:bo + res] = memoryview(into)[:res]
        if res == 0 and off < drive.size:    # the drive shrank under us: see Drive._short
            res = -errno.EIO
        if res < 0:
            if self._err is None:
                self._err = IOFailure(f"read {drive.path}@{off}: {os.strerror(-res)}")
        elif 0 < res < len(into):
            self._read(ring, drive, off + res, bo + res, len(into) - res)   # short: the rest
            return
        # else all of it, or the end of a short image: the rest reads as zeros
        self._left -= 1
        if not self._left:
            landed, self._landed = self._landed, None   # it refers to this job: no cycle
            landed(self._err)

    def intact(self) -> bool:
        """No slot changed owner since the job began (see the fence's ``moved``):
        what it read is its LD's. Otherwise the caller reads again."""
        return self._fence is None or self._fence.moves == self._moves

    def done(self) -> None:
        if self._token is not None:
            token, self._token = self._token, None
            self._fence.end(token)

