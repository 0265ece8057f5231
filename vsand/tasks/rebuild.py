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

from ..errors import InvalidArgument, IOFailure, NoSpace
from .task import Step, off_loop

NAME = "rebuild"
TARGET = "pool"
MAX_MOVES = 16          # members per step: 32 MiB written, 128 MiB read at most

log = logging.getLogger("vsand.tasks")


class Rebuild:
    PHASE = "rebuild"

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
        return self._remaining()

    def _remaining(self) -> int:
        return len(self.engine.damage().todo)

    def _plan(self, budget: int, skip: set):
        return self.engine.rebuild_plan(budget, skip)

    async def step(self, target: str, budget: int) -> Step:
        """Members, each 2 MiB written and up to 8 MiB read, copied in parallel
        worker threads: reads of several drives at once keep the disks busier than
        one after the other. The whole step counts as busy time for the throttle
        (``loop_seconds`` None): the copies compete with clients for the drives,
        not only for the loop."""
        async with self.moving:
            # The throttle sizes steps by cost per unit, which parallel copies make
            # look small: an idle step (budget > 1) takes the most members at once,
            # a paced one (busy clients, a rate limit) one.
            plan = self._plan(MAX_MOVES if budget > 1 else 1, self.unplaced | self.unread)
            if plan is None:
                self._end()
                return Step(0, 0, 0, True, "done")
            if plan.moves:
                loop = asyncio.get_running_loop()
                await off_loop(asyncio.gather(*(loop.run_in_executor(None, plan.copy, m)
                                                for m in plan.moves)), plan.finish)
            r = plan.finish()
        self.unplaced.update(r["skipped"])
        for k, why in r["failed"]:
            log.warning("%s: %s; left where it was", self.PHASE, why)
            self.unread.add(k)
        return Step(r["copied"], r["bytes"], r["remaining"], False, self.PHASE)

    def _end(self) -> None:
        """No column left that this run can rebuild: done, or why not. Drives being
        removed that hold nothing any more are let go; metadata copies on failed
        drives move to working ones."""
        for i in self.engine.finish_removals():
            log.warning("drive %d removed: nothing is left on it", i)
        try:
            for old, new in self.engine.restore_quorum():
                log.warning("the metadata copy of failed drive %d is now on drive %d", old, new)
        except NoSpace as e:
            log.warning("rebuild: %s", e.message)
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
