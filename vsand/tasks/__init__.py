"""Background work in the daemon's event loop: throttled, resumable, with progress.

runner.py is generic (any kind); each kind of work is its own module (bgcopy.py,
rebuild.py, level.py, scrub.py); throttle.py paces them all. Imports only disk-level
interfaces (the pool object it is given) and errors: never server/ or control/."""

from __future__ import annotations

import asyncio

from .bgcopy import NAME as BGCOPY
from .bgcopy import BgCopy
from .level import NAME as LEVEL
from .level import Level
from .rebuild import NAME as REBUILD
from .rebuild import Rebuild
from .scrub import NAME as SCRUB
from .scrub import Scrub
from .runner import TaskBusy, TaskRunner
from .throttle import Throttle


def default_kinds(engine) -> dict:
    moving = asyncio.Lock()      # see Rebuild: copies with fixed member lists, one at a time
    return {BGCOPY: BgCopy(engine, moving), REBUILD: Rebuild(engine, moving),
            LEVEL: Level(engine, moving), SCRUB: Scrub(engine)}


__all__ = ["BGCOPY", "LEVEL", "REBUILD", "SCRUB", "TaskBusy", "TaskRunner", "Throttle", "default_kinds"]
