"""One background task: its durable record and its live progress figures."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from .throttle import MiB, TokenBucket

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, FAILED, CANCELLED)
RATE_WINDOW = 5.0        # seconds of history behind the MiB/s and ETA figures

# what pool.save_task stores; anything else is rebuilt at run time
SAVED = ("id", "kind", "target", "state", "error", "done", "total", "bytes", "rate",
         "phase", "created", "started", "finished")


@dataclass
class Step:
    """What one step of a kind did: work units handled, data bytes copied, units
    still known to remain, and whether the work is complete."""

    units: int
    nbytes: int
    remaining: int
    done: bool
    phase: str = ""           # a kind's own stage name, shown with the progress
    loop_seconds: float | None = None   # event-loop time used, when the step awaited work


@dataclass
class Task:
    id: int
    kind: str
    target: str
    state: str = QUEUED
    error: str = ""
    done: int = 0             # work units (segments) handled, across restarts
    total: int = 0            # done + remaining as last reported
    bytes: int = 0            # data bytes copied, across restarts
    rate: int = 0             # this task's own limit in MiB/s; 0 = only the global one
    phase: str = ""
    created: float = 0.0      # wall clock
    started: float | None = None
    finished: float | None = None
    # run time only
    bucket: TokenBucket = field(default_factory=TokenBucket, repr=False)
    samples: deque = field(default_factory=deque, repr=False)   # (monotonic, bytes, done)
    saved_at: float = 0.0

    @classmethod
    def from_record(cls, rec: dict) -> Task:
        t = cls(**{k: rec[k] for k in SAVED if k in rec})
        t.bucket.set_rate(t.rate)
        return t

    def record(self) -> dict:
        """A fresh msgpack-able dict: the journal keeps what it is given, so a record
        handed to the pool must never be changed afterwards."""
        return {k: getattr(self, k) for k in SAVED}

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    # ---- progress -------------------------------------------------------------------
    def sample(self, now: float) -> None:
        self.samples.append((now, self.bytes, self.done))
        self._trim(now)

    def _trim(self, now: float) -> None:
        # keep one sample at or before the window start as the baseline
        while len(self.samples) > 1 and self.samples[1][0] <= now - RATE_WINDOW:
            self.samples.popleft()

    def rates(self, now: float) -> tuple[float, float]:
        """(bytes/s, units/s) over the last RATE_WINDOW seconds; 0 when stalled."""
        self._trim(now)
        if self.state != RUNNING or not self.samples:
            return 0.0, 0.0
        t0, b0, d0 = self.samples[0]
        _, b1, d1 = self.samples[-1]
        span = now - t0
        if span <= 0:
            return 0.0, 0.0
        return (b1 - b0) / span, (d1 - d0) / span

    def info(self, now: float) -> dict:
        bps, ups = self.rates(now)
        remaining = max(0, self.total - self.done)
        out = self.record()
        out["remaining"] = remaining
        out["mib_s"] = round(bps / MiB, 1)
        out["eta"] = round(remaining / ups, 1) if ups > 0 and self.state == RUNNING else None
        return out


async def off_loop(io, finish) -> None:
    """Awaits ``io``, a step's copying in worker threads. When the task is cancelled
    meanwhile (the daemon stops), the copying still ends and ``finish`` runs before
    the cancel goes on: no copy may run under a closing pool, and none may leave
    what it planned (new segments, watches) behind."""
    try:
        await asyncio.shield(io)
    except asyncio.CancelledError:
        await io
        finish()
        raise
