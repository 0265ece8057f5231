"""Group commit: every FLUSH / FUA reply parked while no commit runs is answered
after a single commit (DESIGN.md §9: one fsync serves every waiter).

A commit covers every write already handled on any connection, which is what
CAN_MULTI_CONN promises. Its drive I/O (fsyncs, the log append) runs in a worker
thread, so a FLUSH stalls no other client's requests; replies parked meanwhile
wait for the next commit, which starts when this one ends (it may not cover
writes handled after it began)."""

from __future__ import annotations

import asyncio
import logging
import time

from .stats import Latency

log = logging.getLogger("vsand.server")


class Committer:
    def __init__(self, begin, executor):
        """``begin()``: starts a commit of every write handled so far; returns a job
        (``run()`` may block and goes to ``executor``; ``finish()`` on the loop
        returns the error or None), or None when the commit is already done."""
        self.begin = begin
        self.io = executor
        self.waiters: list = []
        self.scheduled = False
        self.running = False
        self.commits = 0
        self.latency = Latency()    # begin to answer, of each commit that succeeded
        self.failures = 0
        self.t0 = 0.0               # when the commit running (or last run) began

    def request(self, conn, reply: bytes) -> None:
        self.waiters.append((conn, reply))
        self._schedule()

    def _schedule(self) -> None:
        if not (self.scheduled or self.running):
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._commit)

    def _commit(self) -> None:
        self.scheduled = False
        if self.running or not self.waiters:
            return
        waiters, self.waiters = self.waiters, []
        self.t0 = time.perf_counter()
        try:
            job = self.begin()
        except Exception as e:     # answered as an error to each waiter; the daemon lives on
            self._answer(waiters, e)
            return
        if job is None:
            self._answer(waiters, None)
            return
        self.running = True
        try:
            fut = asyncio.get_running_loop().run_in_executor(self.io, job.run)
        except RuntimeError:       # the executor is shut down (stopping): block here
            job.run()
            self._ran(waiters, job)
            return
        fut.add_done_callback(lambda _: self._ran(waiters, job))

    def _ran(self, waiters, job) -> None:
        self.running = False
        try:
            err = job.finish()     # already finished if the engine had to wait for it
        except Exception as e:
            err = e
        self._answer(waiters, err)
        if self.waiters:
            self._schedule()

    def _answer(self, waiters, err) -> None:
        if err is None:
            self.commits += 1
            self.latency.add(time.perf_counter() - self.t0)
        else:
            self.failures += 1
            if hasattr(err, "message"):          # a storage error: its message says it all
                log.error("commit failed: %s", err.message)
            else:
                log.error("commit failed", exc_info=err)
        for conn, reply in waiters:
            conn.committed(reply, err)
