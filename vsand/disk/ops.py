"""The mutation API (DESIGN.md §3, §9): every change of persistent state is one of
these typed operations, which change memory and record themselves in one call.
``REPLAY`` at the bottom maps each log record to the function that applies it; the
same functions run at run time, so replay cannot drift from what happened.

Two kinds:

- **Data-path operations** change memory at once and are recorded by the next
  commit: map entries (``set_entry``, ``put_entries``; the commit records their
  current values), RStores (``add_rstore``, ``drop_rstore(s)``, ``switch_member``)
  and task progress (``save_task``, ``drop_task``). A client write cannot wait for a
  commit, and a crash before the commit loses only unflushed work, which the
  contract allows.
- **Catalog operations** (``execute``: LD create / delete / resize / attributes,
  snapshot link, snapclone detach, invalidation, settings, drive failure, drive
  removal) are
  committed first, together with everything pending, and applied after: a commit
  that fails leaves memory as it was, so the caller's operation simply did not
  happen. Their apply functions are pure and deterministic given the committed
  state before them, which is exactly what replay sees.

Entry bit layouts are mapping/'s; the share-bit rules of the bulk operations are
sharing.py's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..faults import crashpoint
from ..mapping.lmap import SHARED, SS, owned
from ..physical.drive import MissingDrive
from . import membership, sharing
from .ld import LogicalDisk
from .role import ORIGIN_ATTRS, Role, check_transition


class Ops:
    def __init__(self, pool):
        self.pool = pool

    # ---- data path: applied now, recorded by the next commit ----------------------------
    def set_entry(self, ld, k: int, e: int) -> None:
        fence = self.pool.space.fence
        if fence.active and ld.l2.get(k) & SHARED:
            # Sharing of k ends or moves: an allocation that a read in flight
            # resolved through it may now be written in place by its owner.
            fence.moved()
        ld.l2.set(k, e)
        self.pool.journal.touch(ld.id, k)

    def put_entries(self, ld, lo: int, arr: np.ndarray) -> None:
        """Entries lo..lo+len(arr) of one LMAP at once."""
        ld.l2.put(lo, arr, sparse=True)
        self.pool.journal.touch_lmaps(ld.id, [lo >> ld.l2.shift])

    def add_rstore(self, table, stored: list[int]) -> int:
        idx = table.add(stored)
        self.pool.journal.add_rstore(table, idx)      # an "rsa" record, built at commit
        return idx

    def drop_rstore(self, table, idx: int) -> None:
        """An RStore with no used slot leaves the table; its PSEGs and index are
        reused only after the commit that records this."""
        space = self.pool.space
        stored = table.remove(idx)
        space.forget_members(table, idx)
        for d, g in space.physical(table.raid, stored):
            self.pool.allocator.free_later(d, g)
        self.pool.journal.rsd_ids.append((table, idx))
        self.pool.journal.add({"t": "rsr", "raid": table.raid, "ldad": table.ldad, "i": idx})

    def drop_rstores(self, table, idx: np.ndarray) -> None:
        """``drop_rstore`` for many RStores of one table: one record for all."""
        space = self.pool.space
        rows = table.remove_many(idx)
        for i in idx.tolist():
            space.forget_members(table, i)
        self.pool.allocator.pending.extend(space.physical_rows(table.raid, rows))
        self.pool.journal.rsd_ids.extend((table, i) for i in idx.tolist())
        self.pool.journal.add({"t": "rsr", "raid": table.raid, "ldad": table.ldad,
                               "is": idx.astype(np.uint32).tobytes()})

    def switch_member(self, table, idx: int, col: int, member: int) -> None:
        """Stored member ``col`` of RStore ``idx`` moves to ``member`` (drive, PSEG),
        whose bytes the caller has made equal: rebuild and leveling. LMAPs and
        L2MAPs never change when data moves. The old PSEG is free once this commits."""
        old = table.set_member(idx, col, member)
        space = self.pool.space
        space.forget_members(table, idx)
        # A read running off the loop may still be reading the old PSEG: it is read
        # again on the loop (the fence's moves), and the PSEG is freed after it.
        space.fence.moved()
        alloc, gone = self.pool.allocator, space.physical(table.raid, [old])

        def free_old() -> None:
            for d, g in gone:
                alloc.free_later(d, g)
        space.fence.after_reads(free_old)
        self.pool.journal.add({"t": "rsm", "raid": table.raid, "ldad": table.ldad, "i": idx,
                               "c": col, "m": member})

    def save_task(self, task: dict) -> None:
        """A background task's state (vsand/tasks); durable with the next commit."""
        self.pool.tasks[task["id"]] = task
        self.pool.journal.add({"t": "task", "task": task})

    def drop_task(self, task_id: int) -> None:
        if self.pool.tasks.pop(task_id, None) is not None:
            self.pool.journal.add({"t": "task", "drop": task_id})

    def drive_failed(self, index: int, why: str) -> None:
        """Failure detection's verdict (disk/detector.py): the drive is failed now in
        memory, and durably with the next commit."""
        self.pool.mark_failed(index, why)
        self.pool.journal.add({"t": "dfail", "d": index, "why": why})

    # ---- catalog operations: committed first, then applied ---------------------------------
    def execute(self, rec: dict):
        """Commits everything pending and ``rec`` as one unit, then applies ``rec``
        (the function replay uses, with its run-time effects). Raises, with memory
        untouched by ``rec``, when the commit fails."""
        tx = self.pool.tx
        self.pool.stripes.drain()      # it may share, move or free what writes in flight write
        tx.commit(extra=rec)
        crashpoint("op.after_commit")
        out = REPLAY[rec["t"]](self.pool, rec, True)
        tx.checkpoint_if_due()
        return out


# ---- apply functions: (pool, record, live) ------------------------------------------------
# ``live`` is True at run time: the operation then also releases what it freed (its
# record is durable, so nothing committed refers to it any more) and keeps the
# space reservations; replay leaves both to recovery, which derives them in bulk.
def _ldc(pool, rec, live):
    ld = LogicalDisk(pool, rec["id"], rec["name"], rec["size"], rec["raid"], rec["ldad"],
                     Role(rec.get("role", Role.LUN.value)), rec.get("attrs"))
    pool.catalog.add(ld)
    return ld


def _ldd(pool, rec, live):
    x = pool.catalog.by_id[rec["id"]]
    freed = sharing.unlink(x)
    pool.catalog.remove(x)
    # An LD that named x as its origin keeps its data; that the origin is gone is
    # recorded, so a later LD of the same name is not taken for it.
    for other in pool.catalog.by_id.values():
        for k in ORIGIN_ATTRS:
            if other.attrs.get(k) == x.name:
                del other.attrs[k]
                other.attrs["origin_deleted"] = x.name
    pool.journal.forget(x.id)
    if live:
        _let_go(pool, x, freed)


def _ldn(pool, rec, live):
    """LD ``id`` is called ``name`` from now on. What names it follows in the same
    record, so a crash cannot split them: other LDs' origin attributes and the
    stored background tasks working on it (they find their LD by name)."""
    ld = pool.catalog.by_id[rec["id"]]
    old = ld.name
    pool.catalog.rename(ld, rec["name"])
    for other in pool.catalog.by_id.values():
        for k in ORIGIN_ATTRS:
            if other.attrs.get(k) == old:
                other.attrs[k] = ld.name
    for task in pool.tasks.values():
        if task.get("target") == old:
            task["target"] = ld.name
    ld.refresh()


def _ldr(pool, rec, live):
    ld = pool.catalog.by_id[rec["id"]]
    n = rec["size"] // pool.units.segment
    ks, es = ld.l2.allocated()
    freed = es[ks >= n]
    ld.l2.resize(n)
    ld.size = rec["size"]
    if live and len(freed):
        pool.space.release_now(ld.table, freed)


def _lda(pool, rec, live):
    ld = pool.catalog.by_id[rec["id"]]
    ld.attrs.update(rec.get("attrs", {}))
    for k in rec.get("drop", ()):
        ld.attrs.pop(k, None)
    if "name" in rec:
        pool.catalog.rename(ld, rec["name"])
    ld.refresh()


def _snap(pool, rec, live):
    x = pool.catalog.by_id[rec["src"]]
    p = LogicalDisk(pool, rec["id"], rec["name"], x.size, x.raid, x.ldad, Role(rec["role"]),
                    rec.get("attrs"))
    pool.catalog.add(p)
    sharing.link_snapshot(x, p)
    if live and p.role.reserved:
        pool.space.promise(p, reservation(p))
    return p


def _cdet(pool, rec, live):
    c = pool.catalog.by_id[rec["id"]]
    sharing.detach(c)
    _set_role(c, Role.CLONE, "cdet")
    if live:
        pool.space.promise(c, 0)
        pool.bgcopy_state.pop(c.id, None)


def _inv(pool, rec, live):
    """The LDs in ``ids`` (newest first) lost data they need: each leaves its chain
    like a delete (what older LDs read through it passes on, nothing is copied) and
    keeps nothing, so no space is ever handed to an invalid LD."""
    for i in rec["ids"]:
        x = pool.catalog.by_id[i]
        freed = sharing.unlink(x)
        x.l2.clear()
        pool.journal.forget(x.id)
        _set_role(x, Role.INVALID, "inv")
        if live:
            _let_go(pool, x, freed)


def _rvt(pool, rec, live):
    """LD ``id`` reads like LD ``to`` of its chain; with ``keep``, its bytes before
    stay as a new snapshot (sharing.revert)."""
    x, s = pool.catalog.by_id[rec["id"]], pool.catalog.by_id[rec["to"]]
    p = None
    if "keep" in rec:
        k = rec["keep"]
        p = LogicalDisk(pool, k["id"], k["name"], x.size, x.raid, x.ldad, Role.SNAPSHOT, k.get("attrs"))
        pool.catalog.add(p)
    freed = sharing.revert(x, s, p)
    if live:
        if len(freed):
            pool.space.release_now(x.table, freed)
        if s.role.reserved:          # s owns nothing now: a full copy may be needed
            pool.space.promise(s, reservation(s))
    return p


def _set(pool, rec, live):
    pool.settings[rec["k"]] = rec["v"]


def _dfail(pool, rec, live):
    pool.mark_failed(rec["d"], rec.get("why", "failed"))


def _dleave(pool, rec, live):
    """Drive ``d`` is being emptied for removal: no new PSEGs on it."""
    pool.drive_recs[rec["d"]]["leaving"] = True
    pool.allocator.drives[rec["d"]].leaving = True


def _dgone(pool, rec, live):
    """Drive ``d`` holds nothing any more and leaves the pool (its RSS slot stays,
    so that no pair changes)."""
    i = rec["d"]
    r = pool.drive_recs[i]
    r["leaving"] = r["removed"] = True
    pool.allocator.drives[i].leaving = pool.allocator.drives[i].failed = True
    pool.failed_drives.pop(i, None)     # gone, not failed: the pool is whole without it
    d = pool.drives[i]
    pool.drives[i] = MissingDrive(r["path"], r["size"], "removed")
    if live:
        membership.wipe(d)
    d.close()


def _rsa(pool, rec, live):
    pool.space.table(rec["raid"], rec["ldad"]).add(rec["m"], rec["i"])


def _rsr(pool, rec, live):
    table = pool.space.table(rec["raid"], rec["ldad"])
    if "is" in rec:
        for i in np.frombuffer(rec["is"], np.uint32).tolist():
            table.remove(i)
    else:
        table.remove(rec["i"])


def _rsm(pool, rec, live):
    pool.space.table(rec["raid"], rec["ldad"]).set_member(rec["i"], rec["c"], rec["m"])


def _map(pool, rec, live):
    l2 = pool.catalog.by_id[rec["ld"]].l2
    for k, e in zip(np.frombuffer(rec["k"], np.uint32).tolist(),
                    np.frombuffer(rec["e"], np.uint32).tolist()):
        l2.set(k, e)


def _lmap(pool, rec, live):
    l2 = pool.catalog.by_id[rec["ld"]].l2
    li = rec["li"]
    if li < len(l2.lmaps):
        if rec["e"]:
            l2.install(li, np.frombuffer(rec["e"], np.uint32).copy())
        elif l2.lmaps[li] is not None:
            l2.lmaps[li][:] = l2.fill       # absent at commit: it read as the fill


def _r5d(pool, rec, live):
    pool.tx.dirty.add(((rec["raid"], rec["ldad"]), rec["i"]))


def _r5c(pool, rec, live):
    pool.tx.dirty.clear()


def _task(pool, rec, live):
    if "drop" in rec:
        pool.tasks.pop(rec["drop"], None)
    else:
        pool.tasks[rec["task"]["id"]] = rec["task"]


REPLAY: dict[str, Callable] = {
    "ldc": _ldc, "ldd": _ldd, "ldn": _ldn, "ldr": _ldr, "lda": _lda, "snap": _snap, "cdet": _cdet,
    "inv": _inv, "rvt": _rvt, "set": _set, "dfail": _dfail, "dleave": _dleave, "dgone": _dgone,
    "rsa": _rsa, "rsr": _rsr, "rsm": _rsm, "map": _map, "lmap": _lmap,
    "r5d": _r5d, "r5c": _r5c, "task": _task,
}


# ---- helpers ------------------------------------------------------------------------------
def _set_role(ld, role: Role, op: str) -> None:
    check_transition(ld.role, role, op)
    ld.role = role
    ld.refresh()


def _let_go(pool, x, freed: np.ndarray) -> None:
    """Run-time effects of an LD leaving its data behind (delete, invalidation)."""
    if len(freed):
        pool.space.release_now(x.table, freed)
    pool.space.promise(x, 0)
    pool.bgcopy_state.pop(x.id, None)


def reservation(ld) -> int:
    """Segments a reserved LD may still need from its reservation: a reserved
    snapshot, a full copy less what it owns; a copying clone, the allocated
    segments it still reads through its successors (what BGCOPY copies)."""
    if ld.role.copying:
        n = 0
        for lo, hi in ld.l2.ranges():
            sel = (ld.l2.entries(lo, hi) & SS) != 0
            if sel.any():
                n += int(np.count_nonzero(owned(sharing.resolve_range(ld, lo, hi)[sel])))
        return n
    return max(0, ld.l2.nsegs - ld.allocated_segments())
