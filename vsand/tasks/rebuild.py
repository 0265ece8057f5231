"""The "rebuild" task kind (DESIGN.md §5): gives every RStore with a member on a
failed drive a working member again. One task covers the whole pool (target
"pool"); the daemon starts it when a drive fails and at start-up while damage is
left. The engine plans, copies and switches (disk/rebuild.py); this module drives
it in throttled steps. Its work unit is a member PSEG; resuming after a crash
needs no saved cursor: what is left is what the RSD tables still place on failed
drives."""

from __future__ import annotations

import asyncio
import logging
import time

from ..errors import InvalidArgument, IOFailure, NoSpace
from .task import Step

NAME = "rebuild"
TARGET = "pool"

log = logging.getLogger("vsand.tasks")


class Rebuild:
    def __init__(self, engine, moving: asyncio.Lock):
        """``moving``: held through every step whose copies run off the loop with
        member lists fixed at planning (BGCOPY's too), so a switch never lands
        under another kind's copy."""
        self.engine = engine
        self.moving = moving
        self.unplaced: set = set()    # columns (the engine's keys) with no room this run
        self.unread: set = set()      # columns whose copy failed this run

    def check(self, target: str) -> int:
        if target != TARGET:
            raise InvalidArgument(f"a rebuild works on the whole pool: its target is {TARGET!r}, not {target!r}")
        self.unplaced, self.unread = set(), set()
        return len(self.engine.damage().todo)

    async def step(self, target: str, budget: int) -> Step:
        """A few members per step (``budget`` is the throttle's, in members once it
        has measured some): each is 2 MiB written and up to 8 MiB read off the loop."""
        clock = time.perf_counter
        async with self.moving:
            t0 = clock()
            plan = self.engine.rebuild_plan(max(1, min(budget, 32) // 4), self.unplaced | self.unread)
            if plan is None:
                self._end()
                return Step(0, 0, 0, True, "done", clock() - t0)
            busy = clock() - t0
            if plan.moves:
                io = asyncio.get_running_loop().run_in_executor(None, plan.io)
                try:
                    await asyncio.shield(io)
                except asyncio.CancelledError:
                    await io          # never leave a copy running under a closing pool
                    plan.finish()
                    raise
            t1 = clock()
            r = plan.finish()
            busy += clock() - t1
        self.unplaced.update(r["skipped"])
        for k, why in r["failed"]:
            log.warning("rebuild: %s; left degraded", why)
            self.unread.add(k)
        return Step(r["copied"], r["bytes"], r["remaining"], False, "rebuild", busy)

    def _end(self) -> None:
        """No column left that this run can rebuild: done, or why not."""
        lost = self.engine.damage().lost
        if lost:
            log.warning("rebuild: %d RStore(s) lost data on more failed drives than their "
                        "redundancy covers; the LUNs using them give EIO there", lost)
        if self.unplaced:
            msg = (f"{len(self.unplaced)} RStore member(s) cannot be rebuilt: no drive of their "
                   "RSS has a free PSEG they may use; the pool runs degraded until a drive is "
                   "added or space is freed (then: vsanctl pool rebuild)")
            log.warning("rebuild: %s", msg)
            raise NoSpace(msg)
        if self.unread:
            raise IOFailure(f"{len(self.unread)} RStore member(s) could not be rebuilt "
                            "(read or write errors, see the log); they stay degraded")

    @staticmethod
    def gone(target: str) -> str:
        return "the pool went away"
