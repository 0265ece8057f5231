"""Background work in the daemon's event loop: throttled, resumable, with progress.

runner.py is generic (any kind); each kind of work is its own module (bgcopy.py;
rebuild and leveling later); throttle.py paces them all. Imports only disk-level
interfaces (the pool object it is given) and errors: never server/ or control/."""

from __future__ import annotations

from .bgcopy import NAME as BGCOPY
from .bgcopy import BgCopy
from .runner import TaskBusy, TaskRunner
from .throttle import Throttle


def default_kinds(engine) -> dict:
    return {BGCOPY: BgCopy(engine)}


__all__ = ["BGCOPY", "TaskBusy", "TaskRunner", "Throttle", "default_kinds"]
