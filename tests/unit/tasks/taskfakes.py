"""Fakes for the task-runner tests: a simulated clock, and a pool that keeps task
records (with a notion of what is durable) and copies snapclones in steps."""

from __future__ import annotations

import asyncio
import copy

from vsand.errors import NotFound
from vsand.tasks import TaskRunner, Throttle, default_kinds

MiB = 1 << 20


class Clock:
    def __init__(self):
        self.t = 5000.0
        self.wall_t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.wall_t + self.t

    async def sleep(self, d: float) -> None:
        self.t += max(0.0, d)
        await asyncio.sleep(0)       # really yield, so other coroutines and cancels run


class FakePool:
    """tasks / save_task / drop_task / flush like vsand.disk.pool.Pool, and the
    engine calls bgcopy_step / clone_state on clones of ``nsegs`` segments of
    which every ``alloc_every``-th is allocated."""

    def __init__(self, clock: Clock, tasks: dict | None = None):
        self.clock = clock
        self.tasks: dict[int, dict] = copy.deepcopy(tasks or {})
        self.durable: dict[int, dict] = copy.deepcopy(self.tasks)
        self.flushes: list[float] = []
        self.saves: list[dict] = []
        self.dropped: list[int] = []
        self.clones: dict[str, dict] = {}
        self.calls: list[tuple[str, int]] = []
        self.fail: dict[str, Exception] = {}       # name -> raise this from the next step
        self.seg_cost = 0.001
        self.after_step = None                     # hook(name) run at the end of a step

    # ---- task records -----------------------------------------------------------------
    def save_task(self, rec: dict) -> None:
        self.tasks[rec["id"]] = rec
        self.saves.append(copy.deepcopy(rec))

    def drop_task(self, task_id: int) -> None:
        self.tasks.pop(task_id, None)
        self.dropped.append(task_id)

    def flush(self) -> None:
        self.flushes.append(self.clock.t)
        self.durable = copy.deepcopy(self.tasks)

    # ---- engine -----------------------------------------------------------------------
    def add_clone(self, name: str, nsegs: int, alloc_every: int = 2) -> None:
        self.clones[name] = {"next": 0, "nsegs": nsegs, "every": alloc_every}

    def clone_state(self, name: str) -> dict:
        c = self.clones.get(name)
        if c is None:
            raise NotFound(f"no logical disk named {name!r}")
        rem = c["nsegs"] - c["next"]
        return {"remaining": rem, "copies": self._allocated(c, c["next"], c["nsegs"]),
                "phase": "copy" if rem else "detached", "done": rem == 0}

    @staticmethod
    def _allocated(c: dict, lo: int, hi: int) -> int:
        """Allocated segments (every ``every``-th) in lo..hi: the ones to copy."""
        return -(-hi // c["every"]) - -(-lo // c["every"])

    def bgcopy_plan(self, name: str, n: int) -> dict:
        """A step done while planning: the engine returns a result dict, no Plan."""
        return self.bgcopy_step(name, n)

    def bgcopy_step(self, name: str, max_segments: int) -> dict:
        self.calls.append((name, max_segments))
        if name in self.fail:
            raise self.fail.pop(name)
        c = self.clones.get(name)
        if c is None:
            raise NotFound(f"no logical disk named {name!r}")
        lo = c["next"]
        hi = min(c["nsegs"], lo + max_segments)
        nbytes = sum(MiB for k in range(lo, hi) if k % c["every"] == 0)
        c["next"] = hi
        self.clock.t += self.seg_cost * nbytes / MiB + 1e-6 * (hi - lo)
        if self.after_step:
            self.after_step(name)
        return {"copied": hi - lo, "bytes": nbytes, "remaining": c["nsegs"] - hi,
                "done": hi == c["nsegs"], "work": nbytes // MiB,
                "work_left": self._allocated(c, hi, c["nsegs"])}


def make_runner(clock: Clock, pool: FakePool, **kw) -> TaskRunner:
    foreground = kw.pop("foreground", None)
    th = Throttle(kw.pop("rate_mib", 0), kw.pop("latency_guard", True), clock=clock,
                  sleep=clock.sleep, foreground=foreground, lag=lambda: 0.0)
    return TaskRunner(pool, default_kinds(pool), throttle=th, wall=clock.wall, **kw)


async def settle(cond, limit: int = 200_000) -> None:
    """Lets the loop run until ``cond()`` holds (fake time: no real waiting)."""
    for _ in range(limit):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")
