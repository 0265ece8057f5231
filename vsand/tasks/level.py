"""The "level" task kind (DESIGN.md §5, issue 12 item 4): moves PSEGs from the
fullest drives of each RSS to the emptiest until their used fractions are within
a few percent (disk/level.py). One task covers the pool (target "pool"); the
daemon starts it after a drive is added and after a rebuild or removal ends, and
`vsanctl pool level` by hand. Its steps are rebuild steps (same copies, watch and
switch, same lock against BGCOPY), planned by the leveling rule instead of the
damage; resuming after a crash needs no cursor: what is left is the imbalance."""

from __future__ import annotations

from ..errors import InvalidArgument
from .rebuild import TARGET, Rebuild

NAME = "level"


class Level(Rebuild):
    PHASE = "level"

    def check(self, target: str) -> int:
        if target != TARGET:
            raise InvalidArgument(f"leveling works on the whole pool: its target is {TARGET!r}, not {target!r}")
        if self.engine.damage().todo:
            raise InvalidArgument("failed or leaving drives have data left to move: leveling "
                                  "follows the rebuild")
        self.unplaced, self.unread = set(), set()
        return self._remaining()

    def _remaining(self) -> int:
        return self.engine.level_remaining()

    def _plan(self, budget: int, skip: set):
        return self.engine.level_plan(budget, skip)

    def _end(self) -> None:
        """Level, or as level as moves that do not overshoot can make it."""
