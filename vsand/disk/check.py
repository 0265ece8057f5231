"""Offline consistency checker: labels, superblocks, checkpoint copies, maps,
RSDs and free maps, share bits, and what failed drives cost.

It opens the pool read-only (recovery in memory, nothing written), so it can run
on a pool that crashed: what recovery would see is what gets checked. It takes a
shared lock on every drive, so it refuses a pool a daemon has open unless asked
to read it ``live`` (what it reads may then be half-written).

A report has three parts: ``problems`` (inconsistencies, or data no redundancy
can read: exit 1), ``degraded`` (failed or missing drives whose data redundancy
still covers, not yet rebuilt, or holding a metadata copy: exit 3), ``notes``
(facts worth telling, such as a failed drive that was rebuilt: exit unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Busy, HalfCreated, VsanError
from .pool import Pool
from .verify import check_pool

__all__ = ["Report", "check_paths", "check_pool", "check_report"]


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_paths(paths: list[str], parity: bool = False, live: bool = False) -> list[str]:
    """The problems ``check_report`` finds ([] when the pool is consistent and readable)."""
    return check_report(paths, parity, live).problems


def check_report(paths: list[str], parity: bool = False, live: bool = False,
                 drive_factory=None) -> Report:
    """Checks the pool on ``paths``. Raises Busy when a daemon has it open (and not
    ``live``). ``drive_factory``: how a backend other than files opens its drives."""
    rep = Report()
    try:
        pool = Pool.open(paths, readonly=True, live=live, drive_factory=drive_factory)
    except HalfCreated as e:
        rep.problems.append(f"{e.message}; vsand formats such drives again when it starts")
        return rep
    except Busy:
        raise                     # the caller says who holds it
    except VsanError as e:
        rep.problems.append(f"pool cannot be opened: {e.message}")
        return rep
    try:
        rep.problems += [f"not a drive of this pool: {s}" for s in pool.strangers]
        rep.problems += check_pool(pool, parity=parity)
        rep.notes += [f"replayed {pool.replayed} log records"] if pool.replayed else []
        if pool.tx.needs_check:
            rep.notes.append(f"needs_check is set: the last run stopped writing after: "
                             f"{pool.tx.needs_check}")
        failed = {i: why for i, why in pool.failed_drives.items()}
        for i, d in pool.drives.items():
            if d.failed and i not in failed and not pool.drive_recs[i].get("removed"):
                failed[i] = getattr(d, "why", "failed")
        left = pool.damage().by_drive(pool) if failed else {}
        for i, why in sorted(failed.items()):
            what = f"drive {i} ({pool.drive_recs[i]['path']}): {why}"
            if left.get(i) or i in pool.quorum_ids:
                rep.degraded.append(what + (f"; {left[i]} member(s) to rebuild" if left.get(i) else
                                            "; it held a metadata copy"))
            else:   # rebuilt: no RStore has a member on it any more
                rep.notes.append(what + "; rebuilt, nothing depends on it")
        for name, n in sorted(pool.degraded.items()):
            rep.problems.append(f"LD {name}: {n} segment(s) unreadable: no redundancy covers "
                                f"the failed drives they sit on")
    finally:
        pool.close()
    return rep
