"""Pacing of background work in the daemon's event loop (DESIGN.md §8).

Background steps are synchronous: while one runs, no NBD request is served. Two
limits decide when the next step may start and how big it may be:

* a **rate limit** in MiB/s (0 = unlimited): a token bucket over the data bytes
  copied, global (``[tasks] rate_mib``) and optionally per task. A step may run the
  bucket into debt; the next one waits until the debt is paid, so the long-run rate
  is exact and no step has to guess its byte count in advance.
* a **latency guard**: while NBD requests are being served (the daemon's request
  counter moved in the last ``FG_HOLD`` s), steps are short (``BUSY_BATCH``) and
  take at most a ``duty`` share of the loop: after a step of t seconds the next one
  waits ``t * (1 - duty) / duty`` (commits the runner makes count too). A loop-lag
  probe (a callback every ``PROBE_INTERVAL`` that measures how late it fires: what
  a request arriving then waits) feeds AIMD on the duty: every ``ADJUST_INTERVAL``,
  a median lag above ``LAG_TARGET``, or a busy step longer than ``OVERRUN`` busy
  batches, halves it; otherwise it grows by ``DUTY_STEP``. With no foreground
  traffic the task runs ``IDLE_BATCH``-long steps back to back at full speed.

Constants, and why:

==================  ==========  =====================================================
PROBE_INTERVAL      5 ms        200 cheap callbacks/s, ~20 samples per decision
IDLE_BATCH          25 ms       per-step overhead (~50 us) under 1 %; a request that
                                arrives during the last idle step waits at most this
BUSY_BATCH          2 ms        one or two 1 MiB segments (the engine's unit, ~1-2 ms
                                each): no more than one 4K write's p99 at queue depth
FG_HOLD             250 ms      bursty clients (FLUSH waits, think time) do not flip
                                the task to idle-size steps mid-burst
LAG_TARGET          2 ms        median, not peak: a loop that is late most of the
                                time is saturated and giving it back helps; single
                                stalls (a log fsync for a client write) are not ours
OVERRUN             4           a busy step over 8 ms (a new RStore's write intent
                                waiting on a fsync behind client data) hurt requests
DUTY_START          1/32        start low when traffic appears, grow while calm
DUTY_MIN/MAX        1/64, 1/4   progress never stops; a closed-loop client that keeps
                                the loop saturated loses at most a quarter of it
                                (latency x1.33), inside the "p99 within 2x" target
DUTY_STEP           0.01        per ADJUST_INTERVAL: MIN to MAX in ~2.5 s of calm
ADJUST_INTERVAL     100 ms      one decision per window: one spike halves only once
BURST               0.1 s       of the rate limit: smooth pacing, small catch-up
SEG_COST_START      2 ms        pessimistic first guess per copied segment
==================  ==========  =====================================================

Batch sizes come from measured step costs: seconds per segment handled (mixed
allocated / unallocated, for idle steps) and seconds per *copied* segment (for busy
steps, so a run of allocated segments cannot overshoot ``BUSY_BATCH``). Both adapt
with fast attack (a slower step takes effect at once) and slow release.

Measured (2 vCPU VM, sparse image files on ext4, 2 GiB thick source): an idle copy
ran at 415-507 MiB/s (243 once, right after other runs left GiBs of dirty pages).
fio 4K random writes at QD 8 (and QD 1) on another LUN, 10 s beside a fresh copy:
p99 1.1-1.3x the no-copy run's (one cold run with DUTY_START 1/8 reached 3.3x,
hence the low start). Under such load the copy gets only 1-3 MiB/s: about one step
in eight touches a new RStore, whose write intent waits for a synchronous log
append behind the client's dirty data (30-150 ms), and the guard keeps such stalls
rare.

Clock, sleep, foreground counter and lag source are injectable: unit tests drive
everything with a fake clock and never time anything real.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from ..units import MiB

PROBE_INTERVAL = 0.005
IDLE_BATCH = 0.025
BUSY_BATCH = 0.002
FG_HOLD = 0.25
LAG_TARGET = 0.002
DUTY_START = 1 / 32
DUTY_MIN = 1 / 64
DUTY_MAX = 1 / 4
DUTY_STEP = 0.01
ADJUST_INTERVAL = 0.1
BURST = 0.1
OVERRUN = 4             # a busy step this many times BUSY_BATCH counts as congestion
MAX_SAMPLES = 1000
SEG_COST_START = 0.002


class TokenBucket:
    """Bytes per second; ``rate`` 0 means unlimited. Tokens may go negative (debt)."""

    def __init__(self, rate_mib: float = 0, now: float = 0.0):
        self.tokens = 0.0
        self.stamp = now
        self.set_rate(rate_mib)

    def set_rate(self, rate_mib: float) -> None:
        self.rate = max(0.0, float(rate_mib or 0)) * MiB
        self.burst = self.rate * BURST
        self.tokens = min(self.tokens, self.burst)

    def _refill(self, now: float) -> None:
        if self.rate:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def delay(self, now: float) -> float:
        """Seconds until the debt is paid (0: a step may start now)."""
        if not self.rate:
            return 0.0
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def spend(self, nbytes: int, now: float) -> None:
        if self.rate:
            self._refill(now)
            self.tokens -= nbytes


class LagProbe:
    """A periodic callback that records how late the event loop runs it."""

    def __init__(self, interval: float = PROBE_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self.samples: list[float] = []
        self._handle = None
        self._due = 0.0

    def start(self) -> None:
        if self._handle is None:
            self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, loop) -> None:
        self._due = self.clock() + self.interval
        self._handle = loop.call_later(self.interval, self._tick, loop)

    def _tick(self, loop) -> None:
        self.record(self.clock() - self._due)
        self._schedule(loop)

    def record(self, lag: float) -> None:
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(lag)

    def take(self) -> float:
        """The median lag since the previous call (0 without samples): a loop that is
        late most of the time, not one stall we could not have prevented (a log
        fsync on behalf of a client write blocks the loop however we pace)."""
        s, self.samples = sorted(self.samples), []
        return s[len(s) // 2] if s else 0.0


class Throttle:
    """Shared by every running task: one duty budget and one global rate for all."""

    def __init__(self, rate_mib: float = 0, latency_guard: bool = True, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable] = asyncio.sleep,
                 foreground: Callable[[], int] | None = None,
                 lag: Callable[[], float] | None = None,
                 segment: int = MiB, lag_target: float = LAG_TARGET):
        self.clock = clock
        self.sleep = sleep
        self.latency_guard = latency_guard
        self.foreground = foreground or (lambda: 0)
        self.probe = None
        if lag is None and latency_guard:
            self.probe = LagProbe(clock=clock)
            lag = self.probe.take
        self.lag = lag or (lambda: 0.0)
        self.segment = segment
        self.lag_target = lag_target
        self.bucket = TokenBucket(rate_mib, clock())
        self.duty = DUTY_START
        self.busy = False
        self.seg_cost = SEG_COST_START      # seconds per segment handled
        self.copy_cost = SEG_COST_START     # seconds per segment actually copied
        self.next_start = -math.inf
        self._fg_count = self.foreground()
        self._fg_seen = -math.inf
        self._adjust_at = 0.0
        self.stats = _fresh_stats()
        self._overran = False

    # ---- lifecycle (the runner starts the probe only while a task runs) -------------
    def start(self) -> None:
        if self.probe:
            self.probe.start()

    def stop(self) -> None:
        if self.probe:
            self.probe.stop()

    # ---- before a step --------------------------------------------------------------
    async def wait(self, bucket: TokenBucket | None = None) -> int:
        """Sleeps until a step may start (yielding to the loop at least once) and
        returns the number of segments it may handle."""
        slept = False
        while True:
            now = self.clock()
            delay = max(self.next_start - now, self.bucket.delay(now),
                        bucket.delay(now) if bucket else 0.0)
            if delay <= 1e-6:      # below timer resolution (and float noise): go
                break
            await self.sleep(delay)
            slept = True
        if not slept:
            await self.sleep(0)     # every step boundary lets NBD requests in
        self._observe(self.clock())
        return self._batch(bucket)

    def _observe(self, now: float) -> None:
        count = self.foreground()
        if count != self._fg_count:
            self._fg_count = count
            self._fg_seen = now
        busy = self.latency_guard and now - self._fg_seen < FG_HOLD
        if busy and not self.busy:
            self.lag()                          # lag seen during idle steps is not news
            self._adjust_at = now + ADJUST_INTERVAL
        elif busy and now >= self._adjust_at:
            lag = self.lag()
            self.stats["lag_max"] = max(self.stats["lag_max"], lag)
            overran, self._overran = self._overran, False
            if lag > self.lag_target or overran:
                self.stats["backoffs"] += 1
                self.duty = max(DUTY_MIN, self.duty / 2)
            else:
                self.duty = min(DUTY_MAX, self.duty + DUTY_STEP)
            self._adjust_at = now + ADJUST_INTERVAL
        self.busy = busy

    def _batch(self, bucket: TokenBucket | None) -> int:
        if self.busy:
            n = BUSY_BATCH / max(self.seg_cost, self.copy_cost)
        else:
            n = IDLE_BATCH / self.seg_cost
        n = max(1, int(n))
        for b in (self.bucket, bucket):
            if b is not None and b.rate:     # one step never runs up much more than a burst
                n = min(n, max(1, int(b.burst // self.segment)))
        return n

    # ---- after a step ---------------------------------------------------------------
    def record(self, seconds: float, segments: int, nbytes: int,
               bucket: TokenBucket | None = None) -> None:
        """Accounts a finished step: its cost, its bytes, its share of the loop."""
        now = self.clock()
        st = self.stats
        st["steps"] += 1
        st["busy_steps"] += self.busy
        st["step_max"] = max(st["step_max"], seconds)
        st["step_time"] += seconds
        if self.busy and seconds > OVERRUN * BUSY_BATCH:
            self._overran = True
        if segments > 0:
            self.seg_cost = _adapt(self.seg_cost, seconds / segments)
        if nbytes > 0:
            self.copy_cost = _adapt(self.copy_cost, seconds * self.segment / nbytes)
        for b in (self.bucket, bucket):
            if b is not None:
                b.spend(nbytes, now)
        self.account(seconds)

    def take_stats(self) -> dict:
        """Counters since the previous call, and the current state (for the log)."""
        st, self.stats = self.stats, _fresh_stats()
        st.update(busy=self.busy, duty=self.duty, seg_cost=self.seg_cost, copy_cost=self.copy_cost)
        return st

    def account(self, seconds: float) -> None:
        """Loop time a task took outside a step (e.g. a commit) counts against the duty."""
        if self.busy:
            now = self.clock()
            self.next_start = max(self.next_start, now) + seconds * (1 - self.duty) / self.duty


def _fresh_stats() -> dict:
    return {"steps": 0, "busy_steps": 0, "step_max": 0.0, "step_time": 0.0, "lag_max": 0.0,
            "backoffs": 0}


def _adapt(est: float, seen: float) -> float:
    """Fast attack, slow release: a slower step counts at once, a faster one slowly."""
    return seen if seen > est else 0.8 * est + 0.2 * seen
