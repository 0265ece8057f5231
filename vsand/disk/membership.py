"""Which drives make up the pool (DESIGN.md §5): formatting a drive for it, and
adding one to a running pool.

A drive joins in two durable steps: its label (pool uuid, a new drive uuid, its
index), then a checkpoint whose superblock lists it (Transactions.superblock is
built from ``drive_recs`` and the allocator's RSSs). A crash between the two
leaves a drive that carries this pool's label but that no superblock lists: the
next start names it "not in the pool" and ignores it, and adding it again formats
it again. Its capacity is usable as soon as ``add`` returns.

A drive leaves in three: ``leave`` moves the pool's metadata copy off it if it
holds one, then records that it takes no new PSEGs; the rebuild
task moves its members elsewhere as it does a failed drive's, but copying them
from the drive itself (RAID0 too); ``let_go`` records it removed once nothing is
on it and wipes its label. Its RSS slot and index stay (so that no RAID1 pair
changes); the next start does not look for it.
"""

from __future__ import annotations

import os
import uuid

from ..errors import Corrupt, InvalidArgument, IOFailure, NoSpace, NotFound, VsanError
from ..faults import crashpoint
from ..mapping.rsd import MAX_PSEGS
from ..meta import format as fmt
from ..physical.allocator import DriveSpace
from ..physical.drive import where
from ..units import format_size
from .rebuild import holds, leaving_drives, left_by_drive, survey

MAX_DRIVES = 256          # a member names its drive in 8 bits (mapping/rsd.py)


def format_drive(d, pool_uuid, index: int, units, path: str, ldad: str) -> dict:
    """Writes drive ``index``'s label on ``d`` and returns its superblock record."""
    npsegs = (d.size - units.quorum) // units.pseg
    if npsegs < 1:
        raise InvalidArgument(f"drive {path}: {format_size(d.size)} leaves no room for a PSEG "
                              f"({format_size(units.pseg)}) after the quorum space ({format_size(units.quorum)})")
    lab = fmt.Label(uuid.UUID(str(pool_uuid)), uuid.uuid4(), index, units.pseg, units.quorum, d.size)
    d.pwrite(fmt.LABEL_OFF, fmt.pack_label(lab))
    d.fsync()
    return {"i": index, "uuid": str(lab.drive_uuid), "path": where(path),
            "size": d.size, "npsegs": min(npsegs, MAX_PSEGS), "ldad": ldad}


def add(pool, path: str, size: int | None, ldad: str, opener) -> dict:
    """Adds the drive at ``path`` (an image file is created with ``size`` when it
    does not exist) to LDAD ``ldad``; durable when this returns. ``opener(path,
    size)`` opens it like the pool's other drives. Refuses a drive of another
    pool, one that is a member already, and an unknown LDAD."""
    pool.tx.writable()
    if ldad not in pool.allocator.rss:
        raise InvalidArgument(f"no LDAD named {ldad!r} (known: {', '.join(sorted(pool.allocator.rss))})")
    if len(pool.drive_recs) >= MAX_DRIVES:
        raise InvalidArgument(f"a pool holds at most {MAX_DRIVES} drives")
    here = where(path)
    if any(r["path"] == here for r in pool.drive_recs.values()):
        raise InvalidArgument(f"{path} is a drive of this pool already")
    if size is None and not os.path.exists(path):
        raise InvalidArgument(f"{path} does not exist (give a size to create an image file there)")
    d = opener(path, size)
    if hasattr(d, "timeout"):
        d.timeout = pool.drive_timeout
    try:
        _refuse_foreign(pool, d, path)
        index = max(pool.drive_recs) + 1
        rec = format_drive(d, pool.pool_uuid, index, pool.units, path, ldad)
        rec["added"] = True              # Pool.open looks for it where it is
        crashpoint("drive_add.after_label")
        pool.stripes.drain()
        pool.drives[index] = d           # the same dict RStoreIO reads members from
        pool.drive_recs[index] = rec
        pool.allocator.add_drive(DriveSpace.new(index, rec["npsegs"], ldad))
    except BaseException:
        d.close()
        raise
    pool.tx.checkpoint()                 # the superblock lists it from now on
    crashpoint("drive_add.after_checkpoint")
    return rec


def _refuse_foreign(pool, d, path: str) -> None:
    try:
        lab = fmt.unpack_label(d.pread(fmt.LABEL_OFF, fmt.LABEL.size))
    except (Corrupt, IOFailure):
        return                            # no label: a blank drive
    if str(lab.pool_uuid) != str(pool.pool_uuid):
        raise InvalidArgument(f"{path} carries a label of another vsand pool ({lab.pool_uuid}); "
                              "wipe its first 4 KiB to use it here")
    if any(r["uuid"] == str(lab.drive_uuid) for r in pool.drive_recs.values()):
        raise InvalidArgument(f"{path} is drive {lab.index} of this pool already")


def leave(pool, index: int) -> int:
    """Starts removing drive ``index``: it takes no new PSEGs, and the rebuild task
    copies its members elsewhere (``let_go`` then lets it go). A metadata copy on
    it moves first (``move_quorum``). Refused for a drive already leaving or gone,
    and when the other drives of its RSS cannot hold what it holds. Returns the
    PSEGs to move."""
    check_removable(pool, index)
    alloc = pool.allocator
    ds = alloc.drives[index]
    held = 0 if ds.failed else ds.npsegs - ds.free
    group = next(g for g in alloc.rss[ds.ldad] if index in g)
    room = sum(alloc.usable(alloc.drives[i]) for i in group if i != index)
    if held > room:
        p = pool.units.pseg
        raise NoSpace(f"the other drives of drive {index}'s RSS have {format_size(room * p)} free; it "
                      f"holds {format_size(held * p)}: add a drive first")
    stuck = _unplaceable(pool, index)
    if stuck:
        raise NoSpace(f"{stuck} member(s) on drive {index} would have nowhere to go (a RAID1 "
                      f"column needs a working pair its RStore does not use, a RAID5 member a "
                      f"drive of the RSS its RStore does not use): add drives first")
    if index in pool.quorum_ids:
        move_quorum(pool, index)
        crashpoint("drive_remove.after_quorum")
        held = 0 if ds.failed else ds.npsegs - ds.free     # its checkpoint copy is gone
    pool.ops.execute({"t": "dleave", "d": index})
    return held


def check_removable(pool, index: int) -> None:
    """Raises with the reason when drive ``index`` is not one that can start leaving."""
    if index not in pool.drive_recs:
        raise NotFound(f"no drive {index}")
    rec = pool.drive_recs[index]
    if rec.get("removed"):
        raise InvalidArgument(f"drive {index} was removed already")
    if rec.get("leaving"):
        raise InvalidArgument(f"drive {index} is being removed already")


def move_quorum(pool, index: int) -> int:
    """The pool's metadata copy on drive ``index`` (leaving or failed) moves to the
    drive outside the quorum with the most free space, through a checkpoint whose
    superblock names the new quorum: a crash before that superblock leaves the old
    quorum whole (nothing on ``index`` was touched), after it the new one. Returns
    the new drive; NoSpace when no drive can hold the metadata reserve."""
    alloc = pool.allocator
    cands = sorted((i for i, ds in alloc.drives.items() if i not in pool.quorum_ids
                    and not ds.failed and not ds.leaving), key=lambda i: -alloc.usable(alloc.drives[i]))
    before = list(pool.quorum_ids)
    why = "no drive outside the metadata quorum is working"
    for new in cands:
        pool.quorum_ids[before.index(index)] = new
        pool.meta.quorum = {i: pool.drives[i] for i in pool.quorum_ids}
        try:
            pool.tx.ensure_meta_reserve()
            pool.tx.checkpoint_now()
        except NoSpace as e:        # raised before any superblock was written
            why = e.message
            alloc.set_reserve(new, 0)
            continue
        except VsanError as e:
            # The new superblock may be on some drives: the old quorum is written
            # again at a newer generation (or the pool turns read-only), or the log
            # that goes on after this would chain to a superseded salt.
            _restore_quorum(pool, before)
            pool.tx.rewrite(e, "moving a metadata copy")
            raise
        except BaseException:
            _restore_quorum(pool, before)
            raise
        alloc.set_reserve(index, 0)
        return new
    _restore_quorum(pool, before)
    raise NoSpace(f"drive {index} holds a copy of the pool's metadata and no other drive can "
                  f"take it ({why}): add a drive first")


def _restore_quorum(pool, before: list[int]) -> None:
    pool.quorum_ids[:] = before
    pool.meta.quorum = {i: pool.drives[i] for i in before}
    for i in pool.allocator.drives:
        if i not in before:
            pool.allocator.set_reserve(i, 0)
    try:
        pool.tx.ensure_meta_reserve()
    except NoSpace:
        pass            # the reserves it had stay set


def _unplaceable(pool, index: int) -> int:
    """Members on drive ``index`` that no other drive could take now (a dry run:
    the drive counts as leaving only for the look)."""
    ds = pool.allocator.drives[index]
    before, ds.leaving = ds.leaving, True
    pool.drive_recs[index]["leaving"] = True
    try:
        n = 0
        for t, idx, col in survey(pool).todo:
            on = {d for d, _ in pool.space.physical(t.raid, t.members(idx))}
            if index in on and not pool.allocator.can_place(t.ldad, t.raid, on):
                n += 1
        return n
    finally:
        ds.leaving = before
        pool.drive_recs[index].pop("leaving", None)


def let_go(pool) -> list[int]:
    """Every leaving drive that holds nothing any more leaves the pool, durably."""
    done = []
    for i in sorted(i for i, r in pool.drive_recs.items() if r.get("leaving") and not r.get("removed")):
        if not holds(pool, i):          # RAID0 data lost with a failed drive keeps it too
            pool.ops.execute({"t": "dgone", "d": i})
            done.append(i)
    return done


def wipe(d) -> None:
    """Best effort: the label of a drive let go, so that nothing takes it for one."""
    try:
        d.pwrite(fmt.LABEL_OFF, bytes(fmt.LABEL.size))
        d.fsync()
    except (IOFailure, OSError):
        pass


def restore_quorum(pool) -> list[tuple[int, int]]:
    """Moves the metadata copy of every failed quorum drive to a working one, so the
    pool is back to its number of copies; [(old, new)]. A copy with nowhere to go
    stays where it is (NoSpace names why)."""
    moved = []
    for i in [i for i in pool.quorum_ids if pool.drives[i].failed]:
        moved.append((i, move_quorum(pool, i)))
    return moved


def rows(pool) -> list[dict]:
    """Every drive as `drive list` shows it: use, state, errors, what is left to move."""
    leaving = leaving_drives(pool)
    left = left_by_drive(pool) if pool.failed_drives or leaving else {}
    out = []
    for i, r in sorted(pool.drive_recs.items()):
        ds = pool.allocator.drives[i]
        failed = pool.drives[i].failed
        out.append({"index": i, "path": r["path"], "size": r["size"], "ldad": r["ldad"],
                    "psegs": ds.npsegs, "free_psegs": max(0, ds.free - ds.reserve),
                    "failed": failed and not r.get("removed"), "quorum": i in pool.quorum_ids,
                    "io_errors": pool.detector.errors.get(i, 0), "rebuild_left": left.get(i, 0),
                    "state": _state(r, pool.failed_drives.get(i), failed)})
    return out


def _state(rec: dict, why: str | None, failed: bool) -> str:
    if rec.get("removed"):
        return "removed"
    if failed:
        return "failed: " + (why or "failed")
    return "leaving" if rec.get("leaving") else "ok"
