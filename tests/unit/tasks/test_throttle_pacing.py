"""vsand/tasks/throttle.py on a fake clock: rate limit, duty cycle under foreground
traffic, AIMD on loop lag, full speed when idle. Nothing here reads a real clock."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from vsand.tasks import throttle as T
from vsand.tasks.throttle import LagProbe, MiB, Throttle, TokenBucket


class Sim:
    """A fake clock and a fake engine whose steps cost simulated time."""

    def __init__(self):
        self.t = 1000.0
        self.slept = 0.0
        self.requests = 0          # the daemon's foreground counter
        self.serve = False         # a request is served during every gap
        self.lags: list[float] = []
        self.busy_time = 0.0

    def clock(self) -> float:
        return self.t

    async def sleep(self, d: float) -> None:
        self.t += d
        self.slept += d

    def foreground(self) -> int:
        if self.serve:
            self.requests += 1
        return self.requests

    def lag(self) -> float:
        return self.lags.pop(0) if self.lags else 0.0

    def throttle(self, **kw) -> Throttle:
        kw.setdefault("lag", self.lag)
        return Throttle(clock=self.clock, sleep=self.sleep, foreground=self.foreground, **kw)

    def step(self, th: Throttle, n: int, cost: float = 0.001, nbytes_per: int = MiB, bucket=None) -> None:
        dt = n * cost
        self.t += dt
        self.busy_time += dt
        th.record(dt, n, n * nbytes_per, bucket)


def run(coro):
    return asyncio.run(coro)


def drive(sim: Sim, th: Throttle, seconds: float, bucket=None, **step) -> tuple[int, list[int]]:
    """Steps for `seconds` of simulated time; returns (bytes copied, batch sizes)."""
    async def go():
        end = sim.t + seconds
        total, batches = 0, []
        while sim.t < end:
            n = await th.wait(bucket)
            batches.append(n)
            sim.step(th, n, bucket=bucket, **step)
            total += n * step.get("nbytes_per", MiB)
        return total, batches
    return run(go())


# ---- rate limit -----------------------------------------------------------------------
@pytest.mark.parametrize("rate", [1, 40, 100, 700])
def test_rate_limit_holds_over_simulated_time(rate):
    sim = Sim()
    th = sim.throttle(rate_mib=rate, latency_guard=False)
    start = sim.t
    total, batches = drive(sim, th, 100.0)
    mib_s = total / MiB / (sim.t - start)
    assert mib_s == pytest.approx(rate, rel=0.03)
    # no single step runs up more than a burst (0.1 s of the rate) or one segment
    assert max(batches) <= max(1, int(rate * T.BURST))


def test_task_bucket_and_global_bucket_both_apply():
    sim = Sim()
    th = sim.throttle(rate_mib=200, latency_guard=False)
    own = TokenBucket(50, sim.t)
    start = sim.t
    total, _ = drive(sim, th, 20.0, bucket=own)
    assert total / MiB / (sim.t - start) == pytest.approx(50, rel=0.03)
    own.set_rate(0)                          # unlimited task: the global limit remains
    start = sim.t
    total, _ = drive(sim, th, 20.0, bucket=own)
    assert total / MiB / (sim.t - start) == pytest.approx(200, rel=0.03)


def test_unallocated_segments_cost_no_tokens():
    sim = Sim()
    th = sim.throttle(rate_mib=10, latency_guard=False)
    start = sim.t
    total, _ = drive(sim, th, 1.0, cost=1e-5, nbytes_per=0)
    assert total == 0 and sim.slept == 0 and sim.t - start < 1.01


def test_token_bucket_debt_and_refill():
    b = TokenBucket(10, now=0.0)
    assert b.delay(0.0) == 0
    b.spend(MiB, 0.0)                         # 1 MiB of debt at 10 MiB/s
    assert b.delay(0.0) == pytest.approx(0.1)
    assert b.delay(0.05) == pytest.approx(0.05)
    assert b.delay(0.1) == 0
    b.spend(5 * MiB, 100.0)                   # a long rest refills only one burst
    assert b.delay(100.0) == pytest.approx(0.5 - T.BURST)
    assert TokenBucket(0).delay(0.0) == 0     # unlimited


# ---- idle: full speed ---------------------------------------------------------------------
def test_idle_pool_runs_big_batches_back_to_back():
    sim = Sim()
    th = sim.throttle()
    total, batches = drive(sim, th, 10.0, cost=0.001)
    assert sim.slept == 0                              # never waits for anything
    assert not th.busy
    assert total / MiB / 10.0 == pytest.approx(1000, rel=0.01)   # the step cost is the only limit
    assert batches[-1] >= int(T.IDLE_BATCH / 0.001) - 1           # tens of ms per step


def test_guard_off_ignores_foreground():
    sim = Sim()
    sim.serve = True
    th = sim.throttle(latency_guard=False)
    drive(sim, th, 5.0)
    assert sim.slept == 0 and not th.busy


# ---- foreground traffic: duty cycle ---------------------------------------------------------
def test_foreground_limits_batch_and_loop_share():
    sim = Sim()
    sim.serve = True
    th = sim.throttle()
    start = sim.t
    _, batches = drive(sim, th, 10.0, cost=0.001)
    assert th.busy
    assert max(batches[1:]) <= int(T.BUSY_BATCH / 0.001)       # ~2 ms steps
    share = sim.busy_time / (sim.t - start)
    assert th.duty == T.DUTY_MAX                                # lag stayed low: grew to the cap
    assert share <= T.DUTY_MAX + 0.02
    assert share > T.DUTY_MAX * 0.8                             # and used what it was given


def test_busy_batches_are_sized_for_copied_segments():
    """A long run of unallocated segments (cheap) must not let the next allocated
    ones overshoot the busy batch."""
    sim = Sim()
    sim.serve = True
    th = sim.throttle()
    drive(sim, th, 0.5, cost=0.002)                 # allocated: 2 ms each
    _, batches = drive(sim, th, 0.01, cost=1e-6, nbytes_per=0)
    assert max(batches) == 1


def test_back_to_idle_after_the_hold_time():
    sim = Sim()
    sim.serve = True
    th = sim.throttle()
    drive(sim, th, 1.0)
    assert th.busy
    sim.serve = False
    slept = sim.slept
    _, batches = drive(sim, th, T.FG_HOLD + 1.0)
    assert not th.busy and batches[-1] > int(T.BUSY_BATCH / 0.001)
    assert sim.slept - slept < T.FG_HOLD            # sleeps only while the hold lasted


# ---- AIMD on lag ---------------------------------------------------------------------------
def test_lag_over_target_halves_duty_once_per_window_then_grows_back():
    sim = Sim()
    sim.serve = True
    th = sim.throttle()

    async def steps(k):                         # tiny steps: their gaps stay inside a window
        for _ in range(k):
            sim.step(th, await th.wait(), cost=1e-5)

    run(steps(1))                               # becomes busy; idle-era lag discarded
    assert th.busy and th.duty == T.DUTY_START
    sim.lags = [T.LAG_TARGET * 3]               # one spike
    sim.t += T.ADJUST_INTERVAL
    run(steps(1))
    assert th.duty == T.DUTY_START / 2
    run(steps(5))                               # same window: no further decision
    assert th.duty == T.DUTY_START / 2
    before = th.duty
    sim.t += T.ADJUST_INTERVAL                  # a calm window: additive increase
    run(steps(1))
    assert th.duty == pytest.approx(before + T.DUTY_STEP)


def test_an_overrunning_busy_step_counts_as_congestion():
    """A step far over the busy batch (e.g. waiting on a fsync) halves the duty even
    though the probe saw nothing, and the gap after it keeps the loop share."""
    sim = Sim()
    sim.serve = True
    th = sim.throttle()
    run(th.wait())
    sim.step(th, 1, cost=0.001)
    assert th.busy and th.duty == T.DUTY_START
    slow = T.OVERRUN * T.BUSY_BATCH * 2
    th.next_start = -math.inf
    sim.step(th, 1, cost=slow)
    assert th.next_start - sim.t == pytest.approx(slow * (1 - th.duty) / th.duty)
    sim.t += T.ADJUST_INTERVAL
    run(th.wait())
    assert th.duty == T.DUTY_START / 2
    sim.step(th, 1, cost=0.001)                      # back to normal: no further penalty
    sim.t += T.ADJUST_INTERVAL
    run(th.wait())
    assert th.duty == pytest.approx(T.DUTY_START / 2 + T.DUTY_STEP)


def test_sustained_lag_drives_duty_to_the_floor_but_not_zero():
    sim = Sim()
    sim.serve = True
    th = sim.throttle()
    sim.lags = [1.0] * 100_000
    start = sim.t
    total, _ = drive(sim, th, 20.0, cost=0.002)
    assert th.duty == T.DUTY_MIN
    assert total > 0                                            # still progressing
    assert sim.busy_time / (sim.t - start) < 3 * T.DUTY_MIN     # mostly stepping aside


def test_commit_time_counts_against_the_duty():
    sim = Sim()
    sim.serve = True
    th = sim.throttle()
    run(th.wait())
    th.busy, th.duty = True, 0.25
    th.next_start = sim.t
    th.account(0.03)
    assert th.next_start == pytest.approx(sim.t + 0.09)


# ---- the probe --------------------------------------------------------------------------------
class StubLoop:
    def __init__(self):
        self.calls = []

    def call_later(self, delay, fn, *args):
        self.calls.append((delay, fn, args))

        class H:
            def cancel(self):
                pass
        return H()


def test_lag_probe_measures_lateness_and_reports_the_median():
    sim = Sim()
    p = LagProbe(interval=0.005, clock=sim.clock)
    loop = StubLoop()
    p._schedule(loop)
    for late in (0.001, 0.250, 0.0, 0.003, 0.002):     # one stall among small delays
        delay, fn, args = loop.calls[-1]
        sim.t += delay + late
        fn(*args)
    assert loop.calls[-1][0] == 0.005                  # re-armed every interval
    assert p.take() == pytest.approx(0.002)
    assert p.take() == 0.0                             # nothing since


def test_lag_probe_runs_on_a_real_loop():
    async def go():
        p = LagProbe(interval=0.001)
        p.start()
        p.start()                      # idempotent
        deadline = time.monotonic() + 30    # a busy machine may run the loop late
        while len(p.samples) <= 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        p.stop()
        return p
    p = run(go())
    assert p._handle is None and len(p.samples) > 3
