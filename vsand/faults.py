"""Named crash points for the crash tests (DESIGN.md §12, like nbdkit's error filter).

``VSAND_CRASHPOINT=name[:n]`` makes the process SIGKILL itself the n-th time (default
1st) it passes ``crashpoint(name)``. Unset, a crash point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

_spec = os.environ.get("VSAND_CRASHPOINT", "")
_points: dict[str, int] = {}
for _item in filter(None, _spec.split(",")):
    _name, _, _n = _item.partition(":")
    _points[_name] = int(_n or 1)


def crashpoint(name: str) -> None:
    if name in _points:
        _points[name] -= 1
        if _points[name] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


def armed() -> bool:
    return bool(_points)


# ``VSAND_DROP_WRITES=lun[,lun...]``: the named LUNs acknowledge writes, trims and
# zeroings without storing them. Only for negative controls: a test that cannot
# tell this apart from a working LUN proves nothing.
_drop = frozenset(filter(None, os.environ.get("VSAND_DROP_WRITES", "").split(",")))


class _DroppedWrites:
    def __init__(self, dev):
        self._dev = dev

    def __getattr__(self, name):
        return getattr(self._dev, name)

    def write(self, offset, data):
        pass

    def write_job(self, offset, data):
        return None

    def trim(self, offset, length):
        pass

    def write_zeroes(self, offset, length, may_trim=True):
        pass


def device(name: str, dev):
    return _DroppedWrites(dev) if name in _drop else dev


# ``VSAND_TASK_FAULT=kind[:n]``: the n-th step (default the 1st) of a background task
# of that kind fails with EIO, once. For the tests of how a failed task is reported.
_task_faults: dict[str, int] = {}
for _item in filter(None, os.environ.get("VSAND_TASK_FAULT", "").split(",")):
    _kind, _, _n = _item.partition(":")
    _task_faults[_kind] = int(_n or 1)


def task_step(kind: str) -> None:
    if kind in _task_faults:
        _task_faults[kind] -= 1
        if _task_faults[kind] == 0:
            from .errors import IOFailure
            raise IOFailure(f"injected fault in a {kind} step (VSAND_TASK_FAULT)")
