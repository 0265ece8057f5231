"""A task's speed: an exponentially weighted moving average over recent seconds.

Steps come at uneven intervals (milliseconds apart while copying, seconds apart
when the throttle holds a task back), so each step's speed is weighted by the time
it covers: ``1 - exp(-dt / tau)``. The average is then the same whatever the step
size, and a stall pulls it down smoothly instead of a window edge making the ETA
jump. The average starts from nothing, so it is divided by the weight its history
has (``1 - exp(-age / tau)``): a young task's rate is its plain average, not a
fraction of it. Until ``warmup`` seconds have been seen there is no rate (the ETA
shows "-").
"""

from __future__ import annotations

import math

TAU = 10.0          # seconds: the age at which a speed's weight has fallen to 1/e
WARMUP = 2.0        # seconds of history before a rate is given


class Ewma:
    def __init__(self, tau: float = TAU, warmup: float = WARMUP):
        self.tau = tau
        self.warmup = warmup
        self.first: float | None = None    # time of the first sample
        self.last: tuple[float, float] | None = None    # (time, cumulative count)
        self.value = 0.0

    def update(self, now: float, count: float) -> None:
        """``count``: the cumulative amount (units, bytes) at ``now``."""
        if self.last is None:
            self.first, self.last = now, (now, count)
            return
        t0, c0 = self.last
        dt = now - t0
        if dt <= 0:
            return            # same instant: folded into the next sample's speed
        w = 1.0 - math.exp(-dt / self.tau)
        self.value += w * ((count - c0) / dt - self.value)
        self.last = (now, count)

    def rate(self, now: float) -> float | None:
        """Per second at ``now`` (the time since the last sample counts as no
        progress), or None before ``warmup`` seconds of history."""
        if self.last is None or now - self.first < self.warmup:
            return None
        idle = max(0.0, now - self.last[0])
        return self.value * math.exp(-idle / self.tau) / -math.expm1(-(now - self.first) / self.tau)

    def restart(self) -> None:
        """Forget the history (a task resumed after a stop: its old speed means nothing)."""
        self.first = self.last = None
        self.value = 0.0
