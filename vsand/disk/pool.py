"""The pool: drives + allocator + RSD tables + logical disks + metadata.

Log records written here (replayed by recovery.apply):
    ldc/ldd/ldr/lda   LD created / deleted / resized / attributes changed
    rsa/rsr           RStore added / removed (RSD table rows)
    map/lmap          LMAP entries (sparse) / one whole LMAP
    r5d/r5c           write intent on an RStore / all intents cleared
    dfail             a drive was marked failed
    snap / cdet       snapshot or snapclone linked / snapclone left its tree
    task / set        a background task's state / a pool setting

Commit (``flush``): take the journal's records, fsync every data drive, append
the records to the log on the quorum drives (fsync), then release the slots and
PSEGs that the committed records freed. A checkpoint replaces the log append
when the log is full or on clean shutdown.
"""

from __future__ import annotations

import math
import os
import uuid

from ..errors import Corrupt, Exists, InvalidArgument, NoSpace, NotFound
from ..faults import crashpoint
from ..mapping.lmap import ALLOCATED, entry_rsd, entry_slot
from ..meta import format as fmt
from ..meta.store import LogFull, MetaStore
from ..physical.allocator import Allocator, DriveSpace, group_rss
from ..physical.drive import Drive, MissingDrive
from ..redundancy.rstore import RStoreIO
from ..units import Units
from . import recovery, sharing
from .copies import PointInTimeCopies
from .journal import Journal
from .ld import LogicalDisk
from .space import Space

RAID_TYPES = (0, 1, 5)
QUORUM_COPIES = 3
CHECKPOINT_AT = 0.5   # fraction of the log area in use that triggers a checkpoint


class Pool(PointInTimeCopies):
    def __init__(self, units: Units, drives: dict, sb: dict):
        self.units = units
        self.drives = drives
        self.pool_uuid = sb["pool"]
        self.drive_recs = {d["i"]: d for d in sb["drives"]}
        spaces = [DriveSpace.new(d["i"], d["npsegs"], d["ldad"]) for d in sb["drives"]]
        rss = {k: [list(g) for g in v] for k, v in sb["rss"].items()}
        self.allocator = Allocator(spaces, rss)
        self.journal = Journal()
        self.rio = RStoreIO(drives, units.stripe_unit)
        self.space = Space(self.allocator, self.journal, units, self.rio)
        self.quorum_ids = list(sb["quorum"])
        self.meta = MetaStore({i: drives[i] for i in self.quorum_ids}, units.quorum)
        self.lds: dict[str, LogicalDisk] = {}
        self.lds_by_id: dict[int, LogicalDisk] = {}
        self.next_ld_id = 1
        self.dirty: set[tuple[tuple[int, str], int]] = set()
        self.ckpt: dict | None = sb.get("ckpt")
        self.closed = False
        self.readonly = False
        self.replayed = 0
        # Background tasks (vsand/tasks) keep their durable state here, opaque to the
        # pool: id -> msgpack-able dict; pool-wide settings likewise (e.g. "snapclone").
        self.tasks: dict[int, dict] = {}
        self.settings: dict[str, object] = {}
        self.bgcopy_state: dict[int, dict] = {}     # BGCOPY cursors (memory only)

    # ---- creation and opening -------------------------------------------------------
    @classmethod
    def create(cls, specs: list[tuple[str, int, str]], units: Units | None = None,
               drive_factory=Drive.open) -> "Pool":
        """Formats a new pool on ``specs`` = [(path, size, ldad)]; image files are created."""
        units = units or Units()
        if not specs:
            raise InvalidArgument("a pool needs at least one drive")
        if len(specs) > 256:
            raise InvalidArgument("at most 256 drives per pool")
        pool_uuid = uuid.uuid4()
        recs, drives = [], {}
        for i, (path, size, ldad) in enumerate(specs):
            d = drive_factory(path, size)
            npsegs = (d.size - units.quorum) // units.pseg
            if npsegs < 1:
                raise InvalidArgument(f"drive {path}: {d.size} bytes leaves no room for a PSEG")
            lab = fmt.Label(pool_uuid, uuid.uuid4(), i, units.pseg, units.quorum, d.size)
            d.pwrite(fmt.LABEL_OFF, fmt.pack_label(lab))
            d.fsync()
            drives[i] = d
            recs.append({"i": i, "uuid": str(lab.drive_uuid), "path": os.path.abspath(path),
                         "size": d.size, "npsegs": min(npsegs, 1 << 24), "ldad": ldad})
        ldads: dict[str, list[int]] = {}
        for r in recs:
            ldads.setdefault(r["ldad"], []).append(r["i"])
        sb = {"ver": fmt.FORMAT_VERSION, "pool": str(pool_uuid), "units": units.to_dict(),
              "drives": recs, "rss": {k: group_rss(v) for k, v in ldads.items()},
              "quorum": sorted(drives)[:QUORUM_COPIES], "ckpt": None, "log_seq": 1}
        pool = cls(units, drives, sb)
        pool.meta.write_superblock(pool._sb_body(None, 1))
        pool._update_reserve()
        return pool

    @classmethod
    def open(cls, paths: list[str], drive_factory=Drive.open, readonly: bool = False) -> "Pool":
        """Opens and recovers a pool. ``readonly`` (the checker) skips every write:
        no resync, no post-recovery checkpoint, no checkpoint on close."""
        opened, labels = {}, {}
        for p in paths:
            d = drive_factory(p, None)
            try:
                lab = fmt.unpack_label(d.pread(fmt.LABEL_OFF, fmt.LABEL.size))
            except Corrupt as e:
                d.close()
                raise Corrupt(f"{p}: {e.message}") from None
            labels[lab.index] = lab
            opened[lab.index] = d
        if not labels:
            raise InvalidArgument("no drives given")
        if len({lab.pool_uuid for lab in labels.values()}) != 1:
            raise Corrupt("drives belong to different pools")
        got = MetaStore.read_superblock(opened.values())
        if got is None:
            raise Corrupt("no valid superblock on any drive")
        gen, sb = got
        units = Units.from_dict(sb["units"])
        drives = {}
        for r in sb["drives"]:
            d = opened.get(r["i"])
            if d is None or str(labels[r["i"]].drive_uuid) != r["uuid"]:
                d = MissingDrive(r["path"], r["size"])
            drives[r["i"]] = d
        pool = cls(units, drives, sb)
        pool.meta.gen = gen
        pool.readonly = readonly
        pool._recover(sb)
        return pool

    def _sb_body(self, ckpt: dict | None, log_seq: int) -> dict:
        return {"ver": fmt.FORMAT_VERSION, "pool": self.pool_uuid, "units": self.units.to_dict(),
                "drives": [self.drive_recs[i] for i in sorted(self.drive_recs)],
                "rss": self.allocator.rss, "quorum": self.quorum_ids, "ckpt": ckpt,
                "log_seq": log_seq}

    def _recover(self, sb: dict) -> None:
        ck = sb.get("ckpt")
        if ck:
            body = self._read_checkpoint(ck)
            recovery.load_checkpoint(self, body)
            for d, psegs in ck["copies"]:
                self.allocator.mark_used(d, psegs)
        records = self.meta.replay(sb["log_seq"])
        for rec in records:
            recovery.apply(self, rec)
        for i, d in self.drives.items():
            self.allocator.drives[i].failed = d.failed
        self.replayed = len(records)
        if self.readonly:
            recovery.derive_free(self)
            return
        recovery.derive_free(self)
        self.space.reserve = {}
        for ld in self.lds_by_id.values():
            if ld.attrs.get("space") == "reserve":
                ld.reserve_left = self._reserve_left(ld)
                self.space.add_reserve(ld.raid, ld.ldad, ld.reserve_left)
        for (key, idx) in sorted(self.dirty):
            t = self.space.tables.get(key)
            if t is not None and t.alive(idx):
                members = self.space.members(t, idx)
                for slot in range(self.units.rstore_segments):
                    self.rio.resync(t.raid, members, slot)
        self._update_reserve()
        if records or self.dirty or self.meta.superblock_missing():
            self.dirty.clear()
            self.checkpoint()

    def _read_checkpoint(self, ck: dict) -> dict:
        p, q = self.units.pseg, self.units.quorum
        errors = []
        for d, psegs in ck["copies"]:
            drive = self.drives[d]
            if drive.failed:
                continue
            try:
                blob = MetaStore.read_blob(drive, [q + g * p for g in psegs], p, ck["len"])
                return fmt.unpack_checkpoint(blob, ck["seq"])
            except Corrupt as e:
                errors.append(f"drive {d}: {e.message}")
        raise Corrupt("no readable checkpoint copy: " + "; ".join(errors or ["all copies on failed drives"]))

    # ---- logical disks -------------------------------------------------------------
    def _new_ld(self, ld_id, name, size, raid, ldad, attrs=None) -> LogicalDisk:
        ld = LogicalDisk(self, ld_id, name, size, raid, ldad, attrs)
        self.lds[name] = ld
        self.lds_by_id[ld_id] = ld
        return ld

    def get(self, name: str) -> LogicalDisk:
        try:
            return self.lds[name]
        except KeyError:
            raise NotFound(f"no logical disk named {name!r}") from None

    def _check_size(self, size: int) -> None:
        seg = self.units.segment
        if not isinstance(size, int) or size <= 0:
            raise InvalidArgument(f"size must be a positive number of bytes, not {size!r}")
        if size % seg:
            raise InvalidArgument(f"size {size} is not a multiple of {seg // 1024 // 1024} MiB")
        if size > self.units.max_ld_size:
            raise InvalidArgument(f"size {size} exceeds the per-LD limit of {self.units.max_ld_size} bytes")

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or len(name) > 255 or "/" in name \
                or not name.isprintable():
            raise InvalidArgument(f"bad LD name {name!r} (1-255 printable characters, no '/')")
        if name in self.lds:
            raise Exists(f"logical disk {name!r} exists")

    def create_ld(self, name: str, size: int, raid: int = 5, ldad: str = "default",
                  thick: bool = False, attrs: dict | None = None) -> LogicalDisk:
        self._check_name(name)
        self._check_size(size)
        if raid not in RAID_TYPES:
            raise InvalidArgument(f"RAID type must be one of 0, 1, 5, not {raid!r}")
        if ldad not in self.allocator.rss:
            raise InvalidArgument(f"no LDAD named {ldad!r}")
        if thick:
            self.space.check_room(ldad, raid, size // self.units.segment)
        self._update_reserve(extra=size // self.units.segment)
        ld_id = self.next_ld_id
        self.next_ld_id += 1
        ld = self._new_ld(ld_id, name, size, raid, ldad, attrs)
        self.journal.add({"t": "ldc", "id": ld_id, "name": name, "size": size, "raid": raid,
                          "ldad": ldad, "attrs": ld.attrs})
        if thick:
            try:
                self._allocate_all(ld)
            except NoSpace:
                # check_room counts PSEGs, not placements (RAID5 needs 5 drives with
                # room): a failed create must not leave a half-allocated LD behind.
                self.delete_ld(name)
                raise
        self.flush()
        return ld

    def _allocate_all(self, ld: LogicalDisk) -> None:
        for k in range(ld.l2.nsegs):
            if not ld.l2.get(k) & ALLOCATED:
                e, fresh = self.space.alloc_segment(ld)
                ld.l2.set(k, e)
                if not fresh:
                    self.rio.zero(ld.raid, self.space.members(ld.table, entry_rsd(e)), entry_slot(e))
        self.journal.touch_lmaps(ld.id, range(len(ld.l2.lmaps)))

    def delete_ld(self, name: str) -> None:
        """Deletes any LD, also one in the middle of a sharing chain: what its
        predecessor reads through it is handed over, nothing is copied."""
        ld = self.get(name)
        self.flush()          # the "ldd" record replays against exactly this state
        if ld.attrs.get("space") == "reserve":
            # what is still reserved for it (its own writes used none of it)
            self.space.add_reserve(ld.raid, ld.ldad, -getattr(ld, "reserve_left", 0))
        self._drop_ld(ld)
        self.journal.add({"t": "ldd", "id": ld.id})
        crashpoint("delete.after_unlink")
        self.flush()
        if self.allocator.pending:
            self.flush()      # RStores emptied by that commit give their PSEGs back now
        self._update_reserve()

    def _drop_ld(self, ld) -> None:
        freed = sharing.unlink(ld)
        if len(freed):
            self.space.free_entries(ld, freed)
        del self.lds[ld.name]
        del self.lds_by_id[ld.id]
        self.bgcopy_state.pop(ld.id, None)
        self.journal.forget(ld.id)

    def save_task(self, task: dict) -> None:
        """Records a task's state; durable with the next commit (flush)."""
        self.tasks[task["id"]] = task
        self.journal.add({"t": "task", "task": task})

    def drop_task(self, task_id: int) -> None:
        if self.tasks.pop(task_id, None) is not None:
            self.journal.add({"t": "task", "drop": task_id})

    def set_setting(self, key: str, value) -> None:
        """A pool-wide setting, durable when this returns."""
        self.settings[key] = value
        self.journal.add({"t": "set", "k": key, "v": value})
        self.flush()

    def resize_ld(self, name: str, size: int) -> None:
        ld = self.get(name)
        self._check_size(size)
        if ld.pred is not None or ld.succ is not None:
            raise InvalidArgument(f"{name} shares data with snapshots; delete them before resizing")
        u = self.units
        if size > ld.size:
            self._update_reserve(extra=(size - ld.size) // u.segment)
        else:
            ld.free_from(size // u.segment)
        ld.l2.resize(size // u.segment)
        ld.size = size
        self.journal.add({"t": "ldr", "id": ld.id, "size": size})
        self.flush()

    def set_attrs(self, name: str, _commit: bool = True, **attrs) -> None:
        ld = self.get(name)
        ld.attrs.update(attrs)
        ld.invalid = bool(ld.attrs.get("invalid"))
        self.journal.add({"t": "lda", "id": ld.id, "attrs": attrs})
        if _commit:
            self.flush()

    # ---- durability ----------------------------------------------------------------
    def intend(self, table, idx: int) -> None:
        """Write intent: a redundant RStore is marked dirty durably before its first
        write since the last commit, so start-up resyncs it if we crash mid-write."""
        if table.raid == 0:
            return
        key = ((table.raid, table.ldad), idx)
        if key in self.dirty:
            return
        rec = [{"t": "r5d", "raid": table.raid, "ldad": table.ldad, "i": idx}]
        try:
            self.meta.append(rec)
        except LogFull:
            self.checkpoint()  # clears every intent; this one is recorded after it
            self.meta.append(rec)
        self.dirty.add(key)

    def flush(self) -> None:
        """Makes every earlier write and the map entries needed to read it durable."""
        nslots, nids, npsegs = len(self.journal.slots), len(self.journal.rsd_ids), len(self.allocator.pending)
        nbulk = len(self.journal.bulk_slots)
        if self.journal.empty() and not (nslots or nids or npsegs or nbulk):
            self.sync_data()
            return
        if self.dirty:
            self.journal.add({"t": "r5c"})
        records = self.journal.take(self.lds_by_id)
        self.sync_data()
        crashpoint("commit.after_data_sync")
        try:
            self.meta.append(records)
        except LogFull:
            self._checkpoint_now()
        else:
            self.dirty.clear()
        self._released(nslots, nids, npsegs, nbulk)
        if self.meta.log_off > self.meta.log_size * CHECKPOINT_AT:
            self.checkpoint()

    def _released(self, nslots: int, nids: int, npsegs: int, nbulk: int = 0) -> None:
        self.allocator.release_pending(npsegs)
        self.space.release_committed(nslots, nids, nbulk)

    def sync_data(self) -> None:
        """fdatasync of every working drive; also safe from a worker thread (the task
        runner writes back dirty data before a commit, so the commit's sync is short)."""
        for d in self.drives.values():
            if not d.failed:
                d.fsync()

    def checkpoint(self) -> None:
        nslots, nids, npsegs = len(self.journal.slots), len(self.journal.rsd_ids), len(self.allocator.pending)
        nbulk = len(self.journal.bulk_slots)
        self.journal.take(self.lds_by_id)
        self.sync_data()
        self._checkpoint_now()
        self._released(nslots, nids, npsegs, nbulk)

    def _checkpoint_now(self) -> None:
        """Writes a full checkpoint; the caller has synced the data drives."""
        self.dirty.clear()
        seq = self.meta.next_seq
        blob = fmt.pack_checkpoint(seq, recovery.checkpoint_body(self, seq))
        p, q = self.units.pseg, self.units.quorum
        n = max(1, math.ceil(len(blob) / p))
        copies = []
        try:
            for d in self.quorum_ids:
                if not self.drives[d].failed:
                    psegs = self.allocator.alloc_meta(d, n)
                    copies.append([d, psegs])
                    MetaStore.write_blob(self.drives[d], [q + g * p for g in psegs], p, blob)
        except NoSpace:
            for d, psegs in copies:
                for g in psegs:
                    self.allocator.free_now(d, g)
            raise
        crashpoint("checkpoint.before_superblock")
        new = {"seq": seq, "len": len(blob), "copies": copies}
        self.meta.write_superblock(self._sb_body(new, seq))
        crashpoint("checkpoint.after_superblock")
        self.meta.reset_log()
        old, self.ckpt = self.ckpt, new
        if old:
            for d, psegs in old["copies"]:
                for g in psegs:
                    self.allocator.free_now(d, g)

    def _update_reserve(self, extra: int = 0) -> None:
        """Keeps enough PSEGs on each quorum drive for the next checkpoint, so a full
        pool can still commit. ``extra`` segments are about to be added to LDs."""
        segs = extra + sum(ld.l2.nsegs for ld in self.lds_by_id.values())
        total_psegs = sum(d.npsegs for d in self.allocator.drives.values())
        need = 4 * segs + 4 * total_psegs + 64 * 1024 + 2 * 1024 * len(self.lds_by_id)
        n = math.ceil(need / self.units.pseg) + 1
        # The current checkpoint copy counts: the first checkpoint of a pool that
        # filled up before it took its PSEGs out of the reserve, and the next
        # checkpoint gives them back.
        held: dict[int, int] = {}
        for d, psegs in (self.ckpt or {}).get("copies", []):
            held[d] = held.get(d, 0) + len(psegs)
        for d in self.quorum_ids:
            ds = self.allocator.drives[d]
            if ds.failed:
                continue
            if ds.free + held.get(d, 0) < n:
                raise NoSpace(f"drive {d} cannot hold the metadata reserve for this size")
        for d in self.quorum_ids:
            self.allocator.set_reserve(d, n)

    def fail_drive(self, index: int) -> None:
        """Marks a drive failed: its RStores run degraded from now on."""
        if index not in self.drives:
            raise NotFound(f"no drive {index}")
        self.drives[index].failed = True
        self.allocator.drives[index].failed = True
        self.journal.add({"t": "dfail", "d": index})
        self.flush()

    def close(self) -> None:
        if self.closed:
            return
        if not self.readonly and not all(d.failed for d in self.meta.quorum.values()):
            self.checkpoint()
        for d in self.drives.values():
            d.close()
        self.closed = True

    # ---- introspection -------------------------------------------------------------
    def map_bytes(self) -> int:
        """RAM held by LMAPs and RSD tables."""
        return (sum(ld.l2.nbytes() for ld in self.lds_by_id.values())
                + sum(t.nbytes() for t in self.space.tables.values()))

    def status(self) -> dict:
        u = self.units
        drives = []
        for i, r in sorted(self.drive_recs.items()):
            ds = self.allocator.drives[i]
            drives.append({"index": i, "path": r["path"], "size": r["size"], "ldad": r["ldad"],
                           "psegs": ds.npsegs, "free_psegs": ds.free, "failed": self.drives[i].failed,
                           "quorum": i in self.quorum_ids})
        return {"pool": self.pool_uuid, "units": u.to_dict(), "drives": drives,
                "lds": [ld.info() for ld in self.lds_by_id.values()],
                "free_bytes": self.allocator.free_psegs() * u.pseg}
