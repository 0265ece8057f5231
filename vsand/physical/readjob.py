"""A read whose drive I/O may run off the event loop (DESIGN.md §13).

The caller resolves the map on the loop into pieces (drive, byte offset, offset
in the result, length); ``try_now`` reads what the page cache already holds
without blocking (``RWF_NOWAIT``), ``run`` reads the rest and may block, so it is
what a worker thread runs (``preadv`` releases the GIL). A direct (O_DIRECT) drive
has no page cache: a no-wait read of it would wait for the device on the loop, so
its pieces always go to ``run``. ``done`` is called once,
whatever happened: it ends the job's hold on ``fence`` (the storage layer's
read fence, begun when the job was made) so that what it resolved may be freed.
"""

from __future__ import annotations

import errno
import os

from ..errors import IOFailure
from .drive import Drive

NOWAIT = getattr(os, "RWF_NOWAIT", 0)


class ReadJob:
    __slots__ = ("buf", "pieces", "holes", "_fence", "_token", "_moves")

    nowait = bool(NOWAIT)      # cleared for good when the kernel or file system refuses it

    def __init__(self, n: int, pieces: list, holes: bool, fence):
        self.buf = bytearray(n)          # holes stay zero
        self.pieces = pieces
        self.holes = holes
        self._fence = fence
        self._token = fence.begin()
        self._moves = fence.moves

    def try_now(self) -> bool:
        """Reads every piece the page cache holds; True when nothing is left."""
        if not ReadJob.nowait:
            return not self.pieces
        mv = memoryview(self.buf)
        left = []
        for drive, off, bo, k in self.pieces:
            if type(drive) is not Drive or drive.failed or drive.direct:
                left.append((drive, off, bo, k))     # a stand-in, wrapped or direct drive: its own path
                continue
            try:
                got = os.preadv(drive.fd, [mv[bo:bo + k]], off, NOWAIT)
            except BlockingIOError:
                got = 0
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                    ReadJob.nowait = False
                    got = 0
                else:
                    raise IOFailure(f"read {drive.path}@{off}: {e.strerror}") from e
            if got < k:                  # not cached (or a short image's end): the slow path
                left.append((drive, off + got, bo + got, k - got))
        self.pieces = left
        return not left

    def run(self) -> bytearray:
        mv = memoryview(self.buf)
        for drive, off, bo, k in self.pieces:
            drive.readinto(off, mv[bo:bo + k])
        self.pieces = []
        return self.buf

    def intact(self) -> bool:
        """No slot changed owner since the job began (see the fence's ``moved``):
        what it read is its LD's. Otherwise the caller reads again."""
        return self._fence is None or self._fence.moves == self._moves

    def done(self) -> None:
        if self._token is not None:
            token, self._token = self._token, None
            self._fence.end(token)

