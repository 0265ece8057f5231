"""Snapclones (DESIGN.md §8, patent Figs. 13-15): the policy and the counts.

A snapclone C of X is linked like a snapshot (C becomes X's predecessor, role
COPYING_CLONE, with a reservation for what it will copy). BGCOPY (bgcopy.py) then
works in two phases:

1. *copy*: every segment C still reads through its successor is copied into a new
   segment of C; C.Ss is cleared and X.Sp is **kept** (a seed, sharing.py).
2. *leave*: C's predecessor Q may still read segments through C that X no longer
   holds (``sharing.pred_pending``); those are copied into Q. When fewer than M
   remain they are copied in one go with the event loop held (the quiesce of Fig.
   15d) and C leaves the tree (``sharing.detach``, operation ``cdet``).

The pool setting ``snapclone`` is the policy for who preserves data for Q on a
write to X: ``eager`` (Figs. 13f-13g: the copy into C also copies into Q, cfw.py,
so phase 2 finds little) or ``scaling`` (Fig. 15: plain CFW, phase 2 copies the
rest).
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from ..mapping.lmap import SS, owned
from . import sharing

MODES = ("eager", "scaling")
DEFAULT_MODE = "scaling"    # measured better for foreground writes: README, "Measured"
SETTING = "snapclone"       # the pool setting's record key
QUIESCE_M = 64        # phase 2 finishes with the loop held when fewer remain (Fig. 15d)
MAX_SCANS = 64        # LMAPs one BGCOPY plan looks at, so planning stays short on huge LDs


def mode(settings: dict) -> str:
    return str(settings.get(SETTING, DEFAULT_MODE))


def check_mode(value) -> str:
    if value not in MODES:
        raise InvalidArgument(f"snapclone mode must be one of {', '.join(MODES)}, not {value!r}")
    return value


def shared_left(c) -> int:
    """Segments phase 1 still has to settle."""
    return sharing.count_shared(c)


def pred_left(c) -> int:
    """Segments phase 2 still owes C's predecessor."""
    return pred_counts(c)[0]


def copies_left(c) -> int:
    """Segments phase 1 still has to copy: shared ones whose holder holds data. A
    shared hole is settled without a copy, so it is no work in a task's progress."""
    n = 0
    for lo, hi in c.l2.ranges():
        pend = (c.l2.entries(lo, hi) & SS) != 0
        if pend.any():
            n += int(np.count_nonzero(pend & owned(sharing.resolve_range(c, lo, hi))))
    return n


def pred_counts(c) -> tuple[int, int]:
    """(segments phase 2 still owes C's predecessor, those of them that need a copy)."""
    left = copies = 0
    for lo, hi in c.l2.ranges():
        need = sharing.pred_pending(c, lo, hi)
        if need.any():
            left += int(np.count_nonzero(need))
            copies += int(np.count_nonzero(need & owned(c.l2.entries(lo, hi))))
    return left, copies


def state(c) -> dict:
    """Where BGCOPY stands: ``remaining`` segments to settle in this ``phase``, of
    which ``copies`` need data copied (the work a task's progress counts)."""
    if not c.role.copying:
        return {"remaining": 0, "copies": 0, "phase": "done", "done": True}
    left = shared_left(c)
    if left:
        return {"remaining": left, "copies": copies_left(c), "phase": "copy", "done": False}
    left, copies = pred_counts(c)
    return {"remaining": left, "copies": copies, "phase": "leave", "done": False}
