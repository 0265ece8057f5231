"""Which drives make up the pool (DESIGN.md §5): formatting a drive for it, and
adding one to a running pool.

A drive joins in two durable steps: its label (pool uuid, a new drive uuid, its
index), then a checkpoint whose superblock lists it (Transactions.superblock is
built from ``drive_recs`` and the allocator's RSSs). A crash between the two
leaves a drive that carries this pool's label but that no superblock lists: the
next start names it "not in the pool" and ignores it, and adding it again formats
it again. Its capacity is usable as soon as ``add`` returns.
"""

from __future__ import annotations

import os
import uuid

from ..errors import Corrupt, InvalidArgument, IOFailure
from ..faults import crashpoint
from ..mapping.rsd import MAX_PSEGS
from ..meta import format as fmt
from ..physical.allocator import DriveSpace

MAX_DRIVES = 256          # a member names its drive in 8 bits (mapping/rsd.py)


def format_drive(d, pool_uuid, index: int, units, path: str, ldad: str) -> dict:
    """Writes drive ``index``'s label on ``d`` and returns its superblock record."""
    npsegs = (d.size - units.quorum) // units.pseg
    if npsegs < 1:
        raise InvalidArgument(f"drive {path}: {d.size} bytes leaves no room for a PSEG")
    lab = fmt.Label(uuid.UUID(str(pool_uuid)), uuid.uuid4(), index, units.pseg, units.quorum, d.size)
    d.pwrite(fmt.LABEL_OFF, fmt.pack_label(lab))
    d.fsync()
    return {"i": index, "uuid": str(lab.drive_uuid), "path": os.path.abspath(path),
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
    where = os.path.abspath(path)
    if any(r["path"] == where for r in pool.drive_recs.values()):
        raise InvalidArgument(f"{path} is a drive of this pool already")
    if size is None and not os.path.exists(path):
        raise InvalidArgument(f"{path} does not exist (give a size to create an image file there)")
    d = opener(path, size)
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
