"""One background task: its durable record and its live progress figures."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .rate import Ewma
from .throttle import MiB, TokenBucket

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, FAILED, CANCELLED)

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
    total: int = 0            # fixed at the start; grows only when new work appears
    bytes: int = 0            # data bytes copied, across restarts
    rate: int = 0             # this task's own limit in MiB/s; 0 = only the global one
    phase: str = ""
    created: float = 0.0      # wall clock
    started: float | None = None
    finished: float | None = None
    # run time only
    bucket: TokenBucket = field(default_factory=TokenBucket, repr=False)
    unit_rate: Ewma = field(default_factory=Ewma, repr=False)
    byte_rate: Ewma = field(default_factory=Ewma, repr=False)
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
    def advance(self, units: int, remaining: int) -> None:
        """A step handled ``units`` and reports ``remaining``. The total stays what it
        was unless more work appeared; work that went away without us (clients
        overwrote the segments meanwhile) counts as done, so done + remaining is
        always the total and the percentage never jumps back."""
        self.done += units
        self.total = max(self.total, self.done + remaining)
        self.done = max(self.done, self.total - remaining)

    def sample(self, now: float) -> None:
        self.unit_rate.update(now, self.done)
        self.byte_rate.update(now, self.bytes)

    def info(self, now: float) -> dict:
        running = self.state == RUNNING
        ups = self.unit_rate.rate(now) if running else None
        bps = self.byte_rate.rate(now) if running else None
        remaining = max(0, self.total - self.done)
        out = self.record()
        out["remaining"] = remaining
        out["mib_s"] = round(bps / MiB, 1) if bps else 0.0
        out["eta"] = round(remaining / ups, 1) if ups else None      # None: no rate yet ("-")
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
