"""Drive reads through io_uring (DESIGN.md §13): the kernel reads, no thread hops.

A ``Ring`` queues reads (``read``) and hands them to the kernel in one
``io_uring_enter`` per batch: the first read queued asks ``schedule`` (the
server's ``loop.call_soon``) to ``submit`` once the requests at hand are parsed.
Completions raise the ring's eventfd, which the server watches; ``reap`` then
calls each read's callback with the kernel's result (bytes read, or -errno).

Measured here (2-core VM, 2 GiB file, 4K random reads at QD32, one event loop):
cold, 39k reads/s through the ring against 23k through a thread pool handing
completions back in batches and 13k through asyncio's ``run_in_executor``; page
cache hits 227k/s against 61k and 21k. The binding is PyPI's ``liburing``
(maintained, a wheel with liburing built in). Where it cannot be used (not
installed, a kernel or seccomp policy that refuses io_uring, a wheel built for
instructions this CPU lacks) ``open`` says why and the server reads in worker
threads instead.

That last case is not hypothetical: liburing 2026.3.x wheels die with SIGILL on
an AMD EPYC without AVX-512 (seen here, 2026-12-03), at the first call, which no
Python code can catch. So the first ``open`` in a process tries the binding in a
child process first.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import signal
import subprocess
import sys

try:
    import liburing as L
except ImportError as e:         # the server falls back to threads
    L = None
    _missing = str(e)

log = logging.getLogger("vsand.uring")

ENTRIES = 256          # submission queue, and reads in flight at most: more wait in
                       # ``_backlog``. The completion queue (twice this) must never
                       # overflow: the kernel keeps the excess but raises no eventfd for it.


_PROBE = ("import liburing as L\n"
          "r = L.Ring()\n"
          "L.io_uring_queue_init(8, r)\n"
          "L.io_uring_queue_exit(r)\n")
_probed: str | None = None      # "" when the binding works in this process's Python


def _probe() -> str:
    """Why the binding cannot be used here ("" when it can), found in a child."""
    global _probed
    if _probed is None:
        try:
            r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                               timeout=60)
            if r.returncode < 0:
                _probed = (f"the liburing module crashed a test process "
                           f"({signal.Signals(-r.returncode).name}): its build does not run on this machine")
            elif r.returncode:
                _probed = "the liburing module failed in a test process: " + \
                    (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1]
            else:
                _probed = ""
        except (OSError, subprocess.TimeoutExpired) as e:
            _probed = f"the liburing module could not be tried: {e}"
    return _probed


class Ring:
    __slots__ = ("_ring", "_cqe", "_efd", "_schedule", "_waiting", "_queued", "_next",
                 "_backlog", "_cap", "inflight")

    @classmethod
    def open(cls, schedule, entries: int = ENTRIES) -> "tuple[Ring | None, str]":
        """A ring, or None and why not."""
        if L is None:
            return None, f"the liburing module is not available ({_missing})"
        why = _probe()
        if why:
            return None, why
        try:
            return cls(schedule, entries), ""
        except OSError as e:
            return None, f"io_uring refused: {e.strerror or e}"

    def __init__(self, schedule, entries: int):
        ring = L.Ring()
        L.io_uring_queue_init(entries, ring)
        try:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            L.io_uring_register_eventfd(ring, self._efd)
        except BaseException:
            L.io_uring_queue_exit(ring)
            raise
        self._ring = ring
        self._cqe = L.Cqe()
        self._schedule = schedule
        self._waiting: dict[int, tuple] = {}   # user_data -> (buffer, callback): kept alive
        self._queued = False
        self._next = 0
        self._backlog: collections.deque = collections.deque()
        self._cap = entries
        self.inflight = 0             # queued or in the kernel, the backlog included

    def fileno(self) -> int:
        """Readable when reads have completed: then call ``reap``."""
        return self._efd

    def read(self, fd: int, buf: bytearray, off: int, done) -> None:
        """Reads ``len(buf)`` bytes at ``off`` of ``fd`` into ``buf``, which is kept
        (and must not be touched) until ``done(res)`` is called by ``reap``: res is
        the bytes read, fewer at the end of a file, or -errno. A bytearray, whole:
        the binding's I/O vectors keep a memoryview's buffer exported for ever
        (liburing 2026.3.30: 4 KiB leaked per read)."""
        self.inflight += 1
        if len(self._waiting) >= self._cap:
            self._backlog.append((fd, buf, off, done))
            return
        self._issue(fd, buf, off, done)

    def _issue(self, fd: int, buf: bytearray, off: int, done) -> None:
        ring = self._ring
        sqe = L.io_uring_get_sqe(ring)
        if sqe is None:                  # the queue is full: hand it over and go on
            L.io_uring_submit(ring)
            sqe = L.io_uring_get_sqe(ring)
        L.io_uring_prep_read(sqe, fd, buf, off)
        key = self._next = self._next + 1
        L.io_uring_sqe_set_data64(sqe, key)
        self._waiting[key] = (buf, done)
        if not self._queued:
            self._queued = True
            self._schedule(self.submit)

    def submit(self) -> None:
        self._queued = False
        L.io_uring_submit(self._ring)

    def reap(self) -> None:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass
        ring, cqe, waiting = self._ring, self._cqe, self._waiting
        landed = []
        while L.io_uring_cq_ready(ring):
            L.io_uring_peek_cqe(ring, cqe)
            c = cqe[0]
            key = c.user_data
            try:
                res = c.res
            except OSError as e:           # the binding raises a failed read's -errno
                res = -(e.errno or errno.EIO)
            L.io_uring_cqe_seen(ring, c)
            landed.append((waiting.pop(key)[1], res))
        self.inflight -= len(landed)
        backlog = self._backlog
        while backlog and len(waiting) < self._cap:
            self._issue(*backlog.popleft())
        for done, res in landed:
            try:
                done(res)
            except Exception:     # one reader's bug must not strand the others' replies
                log.exception("io_uring completion failed")

    def close(self) -> None:
        """Only once nothing is in flight: the kernel would write into freed buffers."""
        if self._ring is not None:
            L.io_uring_queue_exit(self._ring)
            os.close(self._efd)
            self._ring = None
