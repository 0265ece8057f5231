"""Writes whose drive I/O may run off the event loop (DESIGN.md §13).

The loop does a write's map work (allocation, copy on first write, the write
intent) and hands over a WriteJob: the stripes to write and the bytes. Two
writes to one stripe never overlap in time: a RAID1 pair written in two orders
ends up holding different data, a RAID5 read-modify-write must read the parity
the write before it left, and an O_DIRECT write of part of a block writes back
the rest of that block as it read it. So a job waits, in arrival order, for the
jobs before it on any of its stripes (``StripeLocks``); jobs on other stripes
overlap freely. Every job takes its stripes' queues at once, in arrival order,
so no two jobs can wait for each other.

Map work that moves or rewrites data a job may be writing (a catalog operation,
a trim, a degraded read that reconstructs from the other members) first calls
``drain``, which finishes every job on the loop, running the ones not started.
"""

from __future__ import annotations

import threading
from collections import deque


class WriteJob:
    """``pieces``: (raid, members, slot, offset in the segment, bytes). ``run`` may
    go to a worker thread once the job is ready (``when_ready``); whoever comes
    first runs it (a drain may run a queued job itself). ``done`` on the loop,
    once it ran: gives its stripes to the jobs waiting for them."""

    __slots__ = ("locks", "rio", "pieces", "keys", "nbytes", "redundant", "blocked", "error",
                 "_start", "_claim", "_ran", "_released", "_fence", "_token")

    def __init__(self, locks: "StripeLocks", rio, pieces: list, fence):
        self.locks, self.rio, self.pieces = locks, rio, pieces
        self.keys = list(dict.fromkeys((members[0], slot) for _, members, slot, _, _ in pieces))
        self.nbytes = sum(len(p[4]) for p in pieces)
        self.redundant = any(p[0] for p in pieces)
        self.blocked = 0
        self.error: BaseException | None = None
        self._start = None
        self._claim = threading.Lock()
        self._ran = threading.Event()
        self._released = False
        self._fence, self._token = fence, fence.begin()   # nothing it writes is reused meanwhile

    def when_ready(self, start) -> None:
        """Calls ``start()`` once no earlier job holds one of its stripes (now, or
        from the ``done`` of the job before it)."""
        if self.blocked:
            self._start = start
        else:
            start()

    def run(self) -> None:
        if not self._claim.acquire(blocking=False):
            return
        try:
            for raid, members, slot, so, data in self.pieces:
                self.rio.write(raid, members, slot, so, data)
        except BaseException as e:  # noqa: BLE001 (the loop answers with it)
            self.error = e
        finally:
            self._ran.set()

    def done(self) -> None:
        """On the loop, after ``run``; later calls do nothing."""
        if self._released:
            return
        self._ran.wait()
        self._released = True
        self.pieces = []
        self._fence.end(self._token)
        self.locks.release(self)


class StripeLocks:
    def __init__(self, rio, fence):
        self.rio, self.fence = rio, fence
        self.queues: dict[tuple, deque] = {}
        self.jobs: dict[WriteJob, None] = {}     # not yet done, in arrival order
        self.redundant = 0                       # of those, jobs on RAID1/5 stripes

    def job(self, pieces: list) -> WriteJob:
        j = WriteJob(self, self.rio, pieces, self.fence)
        for key in j.keys:
            q = self.queues.get(key)
            if q is None:
                self.queues[key] = deque((j,))
            else:
                q.append(j)
                j.blocked += 1
        self.jobs[j] = None
        self.redundant += j.redundant
        return j

    def release(self, j: WriteJob) -> None:
        del self.jobs[j]
        self.redundant -= j.redundant
        ready = []
        for key in j.keys:
            q = self.queues[key]
            q.popleft()
            if q:
                nxt = q[0]
                nxt.blocked -= 1
                if not nxt.blocked:
                    ready.append(nxt)
            else:
                del self.queues[key]
        for nxt in ready:
            start, nxt._start = nxt._start, None
            if start is not None:
                start()

    def drain(self) -> None:
        """Finishes every job now, on the calling thread where one has not started
        (its owner's completion still comes, and finds it done)."""
        while self.jobs:
            j = next(iter(self.jobs))
            j.run()
            j.done()
