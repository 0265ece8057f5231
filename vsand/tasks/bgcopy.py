"""The "bgcopy" task kind: make a snapclone independent of its sharing tree
(DESIGN.md §8, Figs. 13-15). The engine does the copying and chooses the approach
(pool setting ``snapclone_mode``); this module only drives it in steps."""

from __future__ import annotations

import asyncio
import time

from .task import Step, off_loop

NAME = "bgcopy"


class BgCopy:
    def __init__(self, engine, moving=None):
        self.engine = engine     # the pool: bgcopy_step, clone_state
        self.moving = moving or asyncio.Lock()    # shared with rebuild (see there)

    def check(self, target: str) -> int:
        """Work known to remain for a new task on ``target`` (raises NotFound): the
        segments that need a copy, not the holes that are settled in bulk. A clone
        with nothing left still gets its step: that is what detaches it."""
        return int(self.engine.clone_state(target)["copies"])

    async def step(self, target: str, max_segments: int) -> Step:
        """Plans on the loop, copies in a worker thread (the bytes move while NBD
        requests are served; file and block I/O release the GIL), applies on the loop.
        Only planning and applying count as the loop time the throttle paces."""
        async with self.moving:
            return await self._step(target, max_segments)

    async def _step(self, target: str, max_segments: int) -> Step:
        clock = time.perf_counter
        t0 = clock()
        plan = self.engine.bgcopy_plan(target, max_segments)
        if isinstance(plan, dict):      # nothing left to copy off the loop: a result
            return _step(plan, None)
        busy = clock() - t0
        if plan.jobs:
            await off_loop(asyncio.get_running_loop().run_in_executor(None, plan.io), plan.finish)
        t1 = clock()
        r = plan.finish()
        return _step(r, busy + clock() - t1)

    @staticmethod
    def gone(target: str) -> str:
        return f"snapclone {target} no longer exists (deleted while it was being copied)"


def _step(r: dict, loop_seconds: float | None) -> Step:
    """Progress counts copies ("work"): settling a shared hole is bookkeeping."""
    return Step(int(r["work"]), int(r["bytes"]), int(r["work_left"]), bool(r["done"]),
                str(r.get("phase", "")), loop_seconds)
