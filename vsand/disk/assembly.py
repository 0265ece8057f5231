"""Assembling a pool from the drives it is given (DESIGN.md §5, §9).

Every path is opened and locked, its label read, and each drive the newest
superblock lists is matched by pool uuid, drive uuid and index, and checked for
its size. A drive that is missing, shorter than its label says, or carries
someone else's label stands in as failed (MissingDrive, with the reason); the pool
decides whether redundancy covers it. Drives are never trusted blindly: a short
image would read zeros where data was.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from ..errors import Corrupt, HalfCreated, IOFailure, InvalidArgument, VsanError
from ..meta import format as fmt
from ..meta.store import MetaStore
from ..physical.drive import MissingDrive

log = logging.getLogger("vsand.pool")


@dataclass
class Assembly:
    sb: dict
    gen: int
    drives: dict                         # index -> Drive or MissingDrive
    lost: dict[int, str] = field(default_factory=dict)      # index -> why, found at this start
    strangers: list[str] = field(default_factory=list)      # paths that are not members


def assemble(paths: list[str], drive_factory) -> Assembly:
    """Opens ``paths`` as one pool. The caller closes ``drives`` on error paths after
    this returns; on a raise, everything opened here is closed."""
    opened: list = []
    try:
        return _assemble(paths, drive_factory, opened)
    except BaseException:
        for d in opened:
            d.close()
        raise


def _assemble(paths, drive_factory, opened) -> Assembly:
    if not paths:
        raise InvalidArgument("no drives given")
    labelled: list[tuple[str, object, fmt.Label]] = []
    strangers: list[str] = []
    for p in paths:
        try:
            d = drive_factory(p, None)
        except (IOFailure, InvalidArgument) as e:
            strangers.append(f"{p}: {e.message}")
            continue
        opened.append(d)
        try:
            lab = fmt.unpack_label(d.pread(fmt.LABEL_OFF, fmt.LABEL.size))
        except (Corrupt, IOFailure) as e:
            strangers.append(f"{p}: {e.message}")
            continue
        labelled.append((p, d, lab))
    if not labelled:
        raise Corrupt("no drive carries a vsand label: " + "; ".join(strangers))
    pools = Counter(lab.pool_uuid for _, _, lab in labelled)
    (pool_uuid, n), *rest = pools.most_common()
    if rest and rest[0][1] == n:
        raise Corrupt(f"drives belong to {len(pools)} different pools in equal numbers "
                      f"({', '.join(str(u) for u in pools)}); give the drives of one pool")
    mine = [(p, d, lab) for p, d, lab in labelled if lab.pool_uuid == pool_uuid]
    for p, _, lab in labelled:
        if lab.pool_uuid != pool_uuid:
            strangers.append(f"{p}: belongs to another pool ({lab.pool_uuid})")
    got = MetaStore.read_superblock([d for _, d, _ in mine])
    if got is None:
        raise HalfCreated(f"drives carry labels of pool {pool_uuid} but no superblock: its "
                          f"creation never completed, so nothing was ever stored on it")
    gen, sb = got
    if sb.get("ver") != fmt.FORMAT_VERSION:
        raise Corrupt(f"superblock: unsupported format version {sb.get('ver')}")
    drives: dict = {}
    lost: dict[int, str] = {}
    by_uuid = {}
    for p, d, lab in mine:
        if str(lab.drive_uuid) in by_uuid:
            strangers.append(f"{p}: a copy of {by_uuid[str(lab.drive_uuid)][0]} (same drive uuid)")
            continue
        by_uuid[str(lab.drive_uuid)] = (p, d, lab)
    for r in sb["drives"]:
        i = r["i"]
        hit = by_uuid.pop(r["uuid"], None)
        if r.get("removed"):        # emptied and let go: not looked for, nothing on it
            drives[i] = MissingDrive(r["path"], r["size"], "removed")
            continue
        if hit is None:
            other = next((s for s in strangers if s.startswith(r["path"] + ": ")), None)
            if other is not None:      # its path holds something else now
                drives[i] = MissingDrive(r["path"], r["size"], "foreign")
                lost[i] = f"replaced by a foreign drive ({other})"
            else:
                drives[i] = MissingDrive(r["path"], r["size"], "missing")
                lost[i] = f"missing at start-up (expected at {r['path']})"
            continue
        p, d, lab = hit
        if lab.index != i or lab.pseg != sb["units"]["pseg"] or lab.quorum != sb["units"]["quorum"]:
            strangers.append(f"{p}: label says drive {lab.index}, the superblock drive {i}")
            drives[i] = MissingDrive(p, r["size"], "foreign")
            lost[i] = f"its label does not match the pool (at {p})"
            continue
        if d.size < r["size"]:
            drives[i] = MissingDrive(p, r["size"], "short")
            lost[i] = f"short: {d.size} bytes, the pool needs {r['size']} (at {p})"
            continue
        drives[i] = d
    for p, d, lab in by_uuid.values():
        strangers.append(f"{p}: drive uuid {lab.drive_uuid} is not in the pool")
    # a removed drive left where it was (its label wiped, or not yet) is no stranger
    gone = {r["path"] for r in sb["drives"] if r.get("removed")}
    strangers = [s for s in strangers if s.split(": ", 1)[0] not in gone]
    used = {id(d) for d in drives.values()}
    for d in opened:
        if id(d) not in used:
            d.close()
    for s in strangers:
        log.warning("not a drive of this pool: %s", s)
    return Assembly(sb, gen, drives, lost, strangers)


def has_label(path: str) -> bool:
    """Whether ``path`` starts with a vsand label's magic (any pool's)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(fmt.LABEL_MAGIC)) == fmt.LABEL_MAGIC
    except FileNotFoundError:
        return False


def close_all(drives: dict) -> None:
    for d in drives.values():
        try:
            d.close()
        except (OSError, VsanError):
            pass
