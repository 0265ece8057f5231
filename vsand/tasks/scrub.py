"""The "scrub" task kind (DESIGN.md §5): checks every allocated RAID1/RAID5 stripe of
the pool and repairs what disagrees (disk/scrub.py). One task covers the pool
(target "pool"), started by `vsanctl pool scrub`. Steps run on the loop (a stripe
must not be written while it is checked), paced like any task; the repairs so far
show in the task's phase and in the log."""

from __future__ import annotations

import time

from ..errors import InvalidArgument
from .task import Step

NAME = "scrub"
TARGET = "pool"
LAST = "scrub_last"      # pool setting: wall time the last whole scrub ended


class Scrub:
    def __init__(self, engine):
        self.engine = engine        # the pool: scrub_cursor, scrub_step, set_setting
        self.cursor = None

    def check(self, target: str) -> int:
        if target != TARGET:
            raise InvalidArgument(f"a scrub works on the whole pool: its target is {TARGET!r}, not {target!r}")
        self.cursor = self.engine.scrub_cursor()
        return self.cursor.total

    def step(self, target: str, budget: int) -> Step:
        if self.cursor is None:             # resumed after a restart: from the start
            self.cursor = self.engine.scrub_cursor()
        r = self.engine.scrub_step(self.cursor, budget)
        left = max(0, self.cursor.total - self.cursor.checked) if not r["done"] else 0
        phase = f"{len(self.cursor.repaired)} repaired"
        if r["done"]:
            self.cursor = None
            self.engine.set_setting(LAST, time.time())      # durable: the schedule counts from it
        return Step(r["checked"], r["bytes"], left, r["done"], phase)

    @staticmethod
    def gone(target: str) -> str:
        return "the pool went away"
