"""What the status page shows, as one JSON-able dict built from the daemon's
in-memory state. Read-only, and cheap enough to run on the event loop about once
a second: the figures are those the control plane gives ``vsanctl status``,
``lun list``, ``drive list`` and ``task list`` (control/handlers.py, whose read
methods this calls), plus each drive's PSEG map as run lengths.

A drive's PSEGs, one state each (``LEGEND``, the codes of the runs):

    free        takes new data
    used        holds data, parity or pool metadata
    failed      used, on a failed drive, and no rebuild is under way for it
    rebuilding  the rebuild task has still to rebuild it (failed drive) or move it
                (drive being removed) elsewhere while that task is queued or running

A drive can have thousands of PSEGs: the page gets [state, count] runs.

Anyone who reaches the listener reads this (it has no authentication), while
vsanctl's answers stay behind the control socket's permissions: an LD's access
rules (which certificate names and networks it admits) are left out, only
``access_rules`` says that it has some, and so are the daemon's socket paths and
process id (``HIDDEN``).
"""

from __future__ import annotations

import numpy as np

from .. import access
from ..control.handlers import Handlers
from ..disk import membership, usage
from ..disk.rebuild import leaving_drives, left_members
from ..tasks import REBUILD

# what `vsanctl status` says that the page does not: where the daemon's sockets are, its pid
HIDDEN = ("nbd_socket", "listen", "pid")

LEGEND = ("free", "used", "failed", "rebuilding")
FREE, USED, FAILED, REBUILDING = range(len(LEGEND))
ACTIVE = ("queued", "running")


def build(daemon) -> dict:
    """The page's whole state. ``daemon``: the running Daemon (pool, nbd, tasks, cfg)."""
    pool = daemon.pool
    h = Handlers(pool, daemon.nbd, daemon.tasks, daemon.cfg)
    tasks = h.task_list()
    rebuilding = any(t["kind"] == REBUILD and t["state"] in ACTIVE for t in tasks)
    states = pseg_states(pool, rebuilding)
    # reserve: free PSEGs held back for metadata (a count, not places), which
    # ``free_psegs`` leaves out
    # membership.rows is what `drive list` shows (h.drive_list() would build the
    # whole pool.status() once more for it: twice the time on the loop)
    drives = [{**row, "status": drive_status(row, rebuilding), "capacity": row["psegs"] * pool.units.pseg,
               "reserve_psegs": pool.allocator.drives[row["index"]].reserve,
               "runs": runs(states[row["index"]])}
              for row in membership.rows(pool)]
    summary = {k: v for k, v in h.status().items() if k not in HIDDEN}
    return {"pool": {**summary, **usage.pool_usage(pool), "pseg": pool.units.pseg},
            "legend": LEGEND, "drives": drives, "trees": trees([public(i) for i in h.lun_list()]),
            "tasks": tasks}


def public(info: dict) -> dict:
    """An LD's ``lun list`` row without its access rules: whether it has any."""
    out = {k: v for k, v in info.items() if k not in access.ATTRS}
    out["access_rules"] = any(info.get(k) for k in access.ATTRS)
    return out


def pseg_states(pool, rebuilding: bool) -> dict[int, np.ndarray]:
    """Drive index -> one LEGEND code per PSEG."""
    out = {}
    for i in pool.drive_recs:
        ds = pool.allocator.drives[i]
        s = ds.used.astype(np.uint8)        # False/True: FREE/USED
        if pool.drives[i].failed:
            s[ds.used] = FAILED
        out[i] = s
    leaving = leaving_drives(pool)
    if rebuilding and (pool.failed_drives or leaving):
        # what the rebuild task has left, found as it finds it (the damage survey),
        # in bulk: a failed multi-TB drive holds millions of columns
        moving = [i for i in out if pool.drives[i].failed or i in leaving]
        for t, stored in left_members(pool):
            drives, psegs = pool.space.physical_arrays(t.raid, stored)
            for d in moving:
                out[d][psegs[drives == d]] = REBUILDING
    return out


def runs(codes: np.ndarray) -> list[list[int]]:
    """[[code, count], ...] of adjacent PSEGs in the same state."""
    if not len(codes):
        return []
    starts = np.concatenate(([0], np.flatnonzero(np.diff(codes)) + 1))
    counts = np.diff(np.concatenate((starts, [len(codes)])))
    return [[int(codes[s]), int(n)] for s, n in zip(starts.tolist(), counts.tolist())]


def drive_status(row: dict, rebuilding: bool) -> str:
    """ok, failed, leaving, rebuilding or removed: one word for the page (``state``
    keeps what ``vsanctl drive list`` says, the reason of a failure included)."""
    if row["state"] == "removed":
        return "removed"
    if rebuilding and row["rebuild_left"]:
        return "rebuilding"
    if row["failed"]:
        return "failed"
    return "leaving" if row["state"] == "leaving" else "ok"


def trees(lds: list[dict]) -> list[dict]:
    """The LDs of ``lun list`` as the trees they were made in: each snapshot and
    snapclone under its origin (a LUN, a snapshot, a clone), the oldest first;
    roots are LUNs and LDs whose origin is gone. Each node is its ``lun list``
    row with ``children``."""
    nodes = {i["name"]: {**i, "children": []} for i in lds}
    roots = []
    for n in sorted(nodes.values(), key=lambda x: x["id"]):
        parent = nodes.get(n["origin"]) if n.get("origin") else None
        if parent is None or _cycle(nodes, n):
            roots.append(n)
        else:
            parent["children"].append(n)
    return roots


def _cycle(nodes: dict, n: dict) -> bool:
    """Whether following origins from ``n`` comes back to it (renames could make
    one): such a node is drawn as a root, so every LD is drawn once."""
    seen, at = set(), n
    while at is not None and at["name"] not in seen:
        seen.add(at["name"])
        at = nodes.get(at.get("origin") or "")
        if at is n:
            return True
    return False
