"""The pool: drives, allocator, RSD tables, the LD catalog and their metadata.

The engine's parts, each with one job: ``catalog`` (LDs by name and id),
``space`` (segments, RStores, reservations), ``ops`` (every change of persistent
state, and its replay), ``tx`` (commits, checkpoints, write intents, the failure
policy), ``meta`` (the on-disk superblocks, log and checkpoint blobs). This class
wires them together and is the face the daemon, the tasks and the tests use: it
validates a request, then hands it to ``ops`` as one typed operation.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import uuid

import numpy as np

from ..errors import Corrupt, Degraded, InvalidArgument, NoSpace, NotFound, VsanError
from ..faults import crashpoint
from ..mapping.lmap import entry_rsd, entry_slot, owned
from ..meta import format as fmt
from ..meta.store import MetaStore
from ..physical import lock
from ..physical.allocator import Allocator, DriveSpace, group_rss
from ..physical.drive import Drive, where
from ..redundancy.rstore import RStoreIO
from ..redundancy.writejob import StripeLocks
from ..units import Units, format_size
from . import bgcopy, health, level, membership, rebuild, recovery, revert, scrub, sharing, snapclone
from .assembly import assemble, close_all
from .catalog import Catalog
from .detector import Detector
from .journal import Journal
from .ld import LogicalDisk
from .ops import Ops
from .role import ACCESS_ATTRS, ORIGIN_ATTRS, created_as
from .space import Space
from .transactions import Transactions
from .verify import check_pool

log = logging.getLogger("vsand.pool")

QUORUM_COPIES = 3


def _give_back_heap() -> None:
    """After an operation over the whole map (start-up, a thick create): glibc keeps
    the heap its temporaries freed, and a map-sized one would stay in the RSS."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)   # the process's own libc; glibc only
    if trim is not None:
        trim(0)


class Pool:
    def __init__(self, units: Units, drives: dict, sb: dict):
        self.units = units
        self.drives = drives
        self.pool_uuid = sb["pool"]
        self.drive_recs = {d["i"]: d for d in sb["drives"]}
        spaces = [DriveSpace.new(d["i"], d["npsegs"], d["ldad"]) for d in sb["drives"]]
        rss = {k: [list(g) for g in v] for k, v in sb["rss"].items()}
        self.allocator = Allocator(spaces, rss)
        for i, d in drives.items():
            self.allocator.drives[i].failed = d.failed
            self.allocator.drives[i].leaving = bool(self.drive_recs[i].get("leaving"))
        self.journal = Journal()
        self.rio = RStoreIO(drives, units.stripe_unit)
        self.space = Space(self.allocator, self.journal, units, self.rio)
        self.stripes = StripeLocks(self.rio, self.space.fence)
        # Direct drives write on worker threads (a write waits for the device);
        # buffered ones take a write into the page cache faster than a thread hop.
        self.write_jobs = any(getattr(d, "direct", False) for d in drives.values())
        self.catalog = Catalog(units)
        self.ops = Ops(self)
        self.space.ops = self.ops
        self.quorum_ids = list(sb["quorum"])
        self.meta = MetaStore({i: drives[i] for i in self.quorum_ids}, units.quorum)
        self.tx = Transactions(self, self.meta, sb)
        self.failed_drives: dict[int, str] = {}    # index -> why, durable
        self.on_failure = None      # (drive index) -> None, at run time: the daemon's rebuild
        self.detector = Detector(self)
        self.rio.on_error = self.detector.error
        # Background tasks (vsand/tasks) keep their durable state here, opaque to the
        # pool: id -> msgpack-able dict; pool-wide settings likewise (e.g. "snapclone").
        self.tasks: dict[int, dict] = {}
        self.settings: dict[str, object] = {}
        self.bgcopy_state: dict[int, dict] = {}     # BGCOPY cursors (memory only)
        self.closed = False
        self.readonly = False
        self.replayed = 0
        self.degraded: dict[str, int] = {}         # LD -> segments unreadable (failed drives)
        self.strangers: list[str] = []             # paths given that are not drives of it
        self.opener = None          # (path, size) -> drive, as this pool's drives were opened
        self.drive_timeout = 0.0    # seconds a drive call may take (Drive.timeout), 0: none

    # ---- creation and opening -------------------------------------------------------
    @classmethod
    def create(cls, specs: list[tuple[str, int, str]], units: Units | None = None,
               drive_factory=None, io: str = "auto", quorum_copies: int = QUORUM_COPIES) -> "Pool":
        """Formats a new pool on ``specs`` = [(path, size, ldad)]; image files are created.
        ``io``: how the drives are opened (Drive.open), unless ``drive_factory`` does it.
        ``quorum_copies``: drives that carry the metadata log (fewer where the drives
        are replicated already, as on RADOS).
        The superblock is written last: until it is on disk the drives carry labels
        of a pool whose creation never completed (HalfCreated on open), which holds
        nothing and may be formatted again."""
        units = units or Units()
        if not specs:
            raise InvalidArgument("a pool needs at least one drive")
        if len(specs) > 256:
            raise InvalidArgument("at most 256 drives per pool")
        pool_uuid = uuid.uuid4()
        recs, drives = [], {}
        drive_factory = drive_factory or functools.partial(Drive.open, io=io)
        try:
            for i, (path, size, ldad) in enumerate(specs):
                d = drive_factory(path, size)
                drives[i] = d
                recs.append(membership.format_drive(d, pool_uuid, i, units, path, ldad))
            ldads: dict[str, list[int]] = {}
            for r in recs:
                ldads.setdefault(r["ldad"], []).append(r["i"])
            salt = MetaStore.new_salt()
            sb = {"ver": fmt.FORMAT_VERSION, "pool": str(pool_uuid), "units": units.to_dict(),
                  "drives": recs, "rss": {k: group_rss(v) for k, v in ldads.items()},
                  "quorum": sorted(drives)[:quorum_copies], "ckpt": None, "log_seq": 1,
                  "log_salt": salt}
            pool = cls(units, drives, sb)
            pool.opener = drive_factory
            pool.meta.reset_log(1, salt)
            pool.meta.write_superblock(pool.tx.superblock(None, 1, salt))
            pool.tx.ensure_meta_reserve()
            return pool
        except BaseException:
            close_all(drives)
            raise

    @classmethod
    def open(cls, paths: list[str], drive_factory=None, readonly: bool = False,
             live: bool = False, accept_loss: bool = False, io: str = "auto") -> "Pool":
        """Opens and recovers a pool; never raises anything but a VsanError.

        ``readonly`` (the checker) writes nothing: no resync, no failure record, no
        checkpoint; it takes a shared lock, so it cannot run beside a daemon unless
        ``live`` (no lock: what it reads may be half-written). ``accept_loss``: start
        even when a drive lost at this start held data no redundancy covers. ``io``:
        how the drives are opened (Drive.open), unless ``drive_factory`` does it."""
        mode = None if live else (lock.SHARED if readonly else lock.EXCLUSIVE)
        factory = drive_factory or functools.partial(Drive.open, lock=mode, io=io)
        asm = assemble(paths, factory)
        # A drive added at run time sits where the pool recorded it, maybe not among
        # the paths configured: look there too (drives given at creation are the
        # caller's to list, so that leaving one out stays possible).
        given = {where(p) for p in paths}
        more = [r["path"] for r in asm.sb["drives"] if r.get("added") and r["path"] not in given
                and os.path.exists(r["path"])]
        if more:
            close_all(asm.drives)
            asm = assemble(list(paths) + more, factory)
        try:
            pool = cls(Units.from_dict(asm.sb["units"]), asm.drives, asm.sb)
            pool.opener = factory
            pool.meta.gen = asm.gen
            pool.readonly = readonly
            pool.strangers = asm.strangers
            pool.recover(asm, accept_loss)
            _give_back_heap()
            return pool
        except VsanError:
            close_all(asm.drives)
            raise
        except Exception as e:
            close_all(asm.drives)
            raise Corrupt(f"pool metadata cannot be loaded: {type(e).__name__}: {e}") from None

    def recover(self, asm, accept_loss: bool) -> None:
        """Loads the checkpoint, replays the log and settles what this start found
        about the drives; ``open`` calls it once, on a new Pool."""
        sb = asm.sb
        ck = self.tx.ckpt
        if ck:
            recovery.load_checkpoint(self, self._read_checkpoint(ck))
            for d, psegs in ck["copies"]:
                self.allocator.mark_used(d, psegs)
        commits = self.meta.replay(sb["log_seq"], sb.get("log_salt", 0), sb.get("log_end"))
        self.replayed = recovery.replay(self, commits, sb["log_seq"])
        unfinished = [] if self.readonly else recovery.drop_unfinished(self)
        recovery.derive_free(self)
        lost = {i: why for i, why in asm.lost.items()
                if i not in self.failed_drives and not self.drive_recs[i].get("removed")}
        before = health.unreadable(self, set(self.failed_drives))
        for i in lost:
            self.allocator.drives[i].failed = True
        failed = set(self.failed_drives) | set(lost)
        self.degraded = health.unreadable(self, failed)
        if self.readonly:
            return
        newly = {n: c for n, c in self.degraded.items() if c > before.get(n, 0)}
        if newly and not accept_loss:
            raise Degraded("; ".join(f"drive {i} is {why}" for i, why in lost.items())
                           + "; no redundancy covers what it holds for "
                           + ", ".join(f"{n} ({c} MiB)" for n, c in sorted(newly.items()))
                           + ". Reconnect the drive, or start with --accept-data-loss to serve "
                             "the pool without it (those segments then fail with EIO)")
        for i, why in lost.items():
            self.mark_failed(i, why)
        for i, why in sorted(self.failed_drives.items()):
            log.warning("drive %d (%s) is failed: %s; the pool runs degraded", i,
                        self.drive_recs[i]["path"], why)
        recovery.restore_reservations(self)
        for (key, idx) in sorted(self.tx.dirty):
            t = self.space.tables.get(key)
            if t is not None and t.alive(idx):
                members = self.space.members(t, idx)
                for slot in range(self.units.rstore_segments):
                    self.rio.resync(t.raid, members, slot)
        self.tx.ensure_meta_reserve()
        checked = self._check_if_needed()
        if commits or self.tx.dirty or lost or checked or unfinished or self.meta.superblock_missing():
            self.tx.dirty.clear()
            self.tx.checkpoint()

    def _check_if_needed(self) -> bool:
        """The last run stopped writing after a failed metadata write: check the pool
        before serving it again (the checkpoint that follows clears the flag)."""
        why = self.tx.needs_check
        if not why:
            return False
        problems = check_pool(self)
        if problems:
            raise Corrupt(f"the pool was marked needs_check ({why}) and the check found "
                          f"{len(problems)} problem(s): " + "; ".join(problems[:5]))
        log.warning("the last run stopped writing after: %s; the pool checks clean", why)
        return True

    def _read_checkpoint(self, ck: dict) -> dict:
        p, q = self.units.pseg, self.units.quorum
        errors = []
        for d, psegs in ck["copies"]:
            drive = self.drives.get(d)
            if drive is None or drive.failed:
                continue
            try:
                return fmt.read_checkpoint(MetaStore.blob_reader(drive, [q + g * p for g in psegs],
                                                                 p, ck["len"]), ck["len"], ck["seq"])
            except VsanError as e:
                errors.append(f"drive {d}: {e.message}")
        raise Corrupt("no readable checkpoint copy: " + "; ".join(errors or ["all copies on failed drives"]))

    # ---- the catalog --------------------------------------------------------------
    @property
    def lds(self) -> dict:
        return self.catalog.by_name

    @property
    def lds_by_id(self) -> dict:
        return self.catalog.by_id

    @property
    def ckpt(self) -> dict | None:
        return self.tx.ckpt

    @property
    def eager_clones(self) -> bool:
        return snapclone.mode(self.settings) == "eager"

    def get(self, name: str) -> LogicalDisk:
        return self.catalog.get(name)

    def chain(self, name: str) -> list[LogicalDisk]:
        """The sharing chain ``name`` belongs to, oldest first."""
        return sharing.chain_of(self.get(name))

    def create_ld(self, name: str, size: int, raid: int = 5, ldad: str = "default",
                  thick: bool = False, attrs: dict | None = None) -> LogicalDisk:
        self.tx.writable()
        self.catalog.check_name(name)
        self.catalog.check_size(size)
        self.catalog.check_raid(raid)
        if ldad not in self.allocator.rss:
            raise InvalidArgument(f"no LDAD named {ldad!r}")
        segs = size // self.units.segment
        why = self.allocator.unplaceable(ldad, raid)
        if why:          # every write would fail with ENOSPC: say so now
            raise NoSpace(why)
        if thick:
            self.space.check_room(ldad, raid, segs)
        self.tx.ensure_meta_reserve(extra=segs)
        attrs = dict(attrs or {})
        if thick:
            # Allocating takes its own commit: until the flag is cleared, a start-up
            # removes the LD, so a thick create cut short leaves nothing behind.
            attrs["creating"] = True
        ld = self.ops.execute({"t": "ldc", "id": self.catalog.next_id, "name": name, "size": size,
                               "raid": raid, "ldad": ldad, "role": "lun", "attrs": attrs})
        if thick:
            try:
                self._allocate_all(ld)
                self.flush()
                crashpoint("create.before_done")
                self.ops.execute({"t": "lda", "id": ld.id, "drop": ["creating"]})
                _give_back_heap()
            except VsanError:
                # check_room counts PSEGs, not placements (RAID5 needs 5 drives with
                # room): a failed create must not leave a half-allocated LD behind.
                if self.tx.failure() is None:
                    self.delete_ld(name)
                raise
        return ld

    def _allocate_all(self, ld: LogicalDisk) -> None:
        for lo, hi in ld.l2.ranges():
            arr = ld.l2.entries(lo, hi)
            try:
                for j in np.flatnonzero(~owned(arr)).tolist():
                    e, fresh = self.space.alloc_segment(ld)
                    arr[j] = e
                    if not fresh:
                        self.rio.zero(ld.raid, self.space.members(ld.table, entry_rsd(e)), entry_slot(e))
            finally:        # what was allocated is the LD's, also when the pool ran out
                self.ops.put_entries(ld, lo, arr)

    def delete_ld(self, name: str) -> None:
        """Deletes any LD, also one in the middle of a sharing chain: what its
        predecessor reads through it is handed over, nothing is copied."""
        ld = self.get(name)
        self.ops.execute({"t": "ldd", "id": ld.id})
        crashpoint("delete.after_unlink")
        self._after_free(name)

    def _after_free(self, name: str) -> None:
        """After a durable operation that freed segments (delete, revert)."""
        try:
            if self.allocator.pending:
                self.flush()  # RStores it emptied give their PSEGs back now
            self.tx.ensure_meta_reserve()
        except VsanError as e:    # the operation is durable; what it freed comes back later
            log.warning("after freeing the space of %s: %s", name, e.message)

    def resize_ld(self, name: str, size: int) -> None:
        ld = self.get(name)
        self.catalog.check_size(size)
        if ld.pred is not None or ld.succ is not None:
            raise InvalidArgument(f"{name} shares data with snapshots; delete them before resizing")
        if ld.role.invalid:
            raise InvalidArgument(f"{name} is invalid; it can only be deleted")
        if size > ld.size:
            self.tx.ensure_meta_reserve(extra=(size - ld.size) // self.units.segment)
        self.ops.execute({"t": "ldr", "id": ld.id, "size": size})

    def rename_ld(self, name: str, new: str) -> None:
        """``name`` is called ``new`` from now on (durable when this returns); the
        LDs that name it as their origin and the tasks working on it follow."""
        ld = self.get(name)
        self.tx.writable()
        self.catalog.check_name(new)
        self.ops.execute({"t": "ldn", "id": ld.id, "name": new})

    def dependents(self, name: str) -> list[LogicalDisk]:
        """The LDs that name ``name`` as their origin (its snapshots and snapclones)."""
        return sorted((ld for ld in self.catalog.by_id.values()
                       if any(ld.attrs.get(k) == name for k in ORIGIN_ATTRS)), key=lambda x: x.name)

    def set_attrs(self, name: str, drop=(), **attrs) -> None:
        """Sets ``attrs`` and removes the attributes named in ``drop``, in one record."""
        ld = self.get(name)
        rec = {"t": "lda", "id": ld.id, "attrs": attrs}
        if drop:
            rec["drop"] = list(drop)
        self.ops.execute(rec)

    # ---- point-in-time copies (Figs. 9, 13-15) -------------------------------------------
    def snapshot(self, source: str, name: str, reserve: bool = False,
                 clone: bool = False) -> LogicalDisk:
        """A point-in-time copy of ``source`` (a LUN or a snapshot) that costs no data
        movement; durable when this returns. ``clone``: a snapclone, which reserves
        what BGCOPY will copy."""
        x = self.get(source)
        if x.role.invalid:
            raise InvalidArgument(f"{source} is invalid; it can only be deleted")
        self.catalog.check_name(name)
        role = created_as(True, reserve, clone)
        nsegs = x.l2.nsegs
        if role.reserved:
            want = sum(int(np.count_nonzero(owned(sharing.resolve_range(x, lo, hi))))
                       for lo, hi in x.l2.ranges()) if clone else nsegs
            need = self.space.reserved_psegs(x.ldad, extra=(x.raid, want))
            free = self.allocator.free_psegs(x.ldad)
            if need > free:
                what = "the copy" if clone else "a full copy"
                p = self.units.pseg
                raise NoSpace(f"not enough free space to reserve {what} of {source} "
                              f"({format_size(want * self.units.segment)} of RAID{x.raid}): with the "
                              f"reservations made already it needs {format_size(need * p)} of drive "
                              f"space, {format_size(free * p)} is free")
        self.tx.ensure_meta_reserve(extra=nsegs)
        crashpoint("snapshot.before_commit")
        # One commit: the source's pending writes, then the snapshot (the quiesce of
        # Fig. 9: requests run one at a time on the loop, so none is in flight).
        return self.ops.execute({"t": "snap", "src": x.id, "id": self.catalog.next_id, "name": name,
                                 "role": role.value,
                                 "attrs": {"snapclone_of" if clone else "snapshot_of": x.name,
                                           **{k: x.attrs[k] for k in ACCESS_ATTRS if k in x.attrs}}})

    def snapclone(self, source: str, name: str) -> LogicalDisk:
        """A snapclone of ``source``, usable at once; BGCOPY (bgcopy_step) makes it
        independent. Durable when this returns."""
        return self.snapshot(source, name, clone=True)

    def revert(self, name: str, to: str, keep: str | None = None):
        """``name`` reads like snapshot ``to`` of its chain from now on (revert.py);
        durable when this returns. With ``keep``, its bytes before are a new snapshot
        of that name (returned); without, they are freed like a deleted LD's."""
        self.tx.writable()
        p = self.ops.execute(revert.record(self, name, to, keep))
        if keep is None:
            self._after_free(name)
        return p

    def invalidate(self, victims: list, why: str) -> None:
        """``victims`` (newest first) lost data they need: durably invalid, and out of
        their chain, when this returns."""
        if victims:
            log.warning("invalidating %s: %s", ", ".join(v.name for v in victims), why)
            self.ops.execute({"t": "inv", "ids": [v.id for v in victims]})

    def leave_tree(self, c) -> None:
        """A snapclone that shares nothing leaves its tree (Fig. 14); durable on return.
        Its last copies are committed first, on their own: a crash between the two
        commits finds the clone fully copied and still in its tree, and the resumed
        task only detaches it."""
        self.flush()
        crashpoint("bgcopy.before_detach_commit")
        self.ops.execute({"t": "cdet", "id": c.id})

    def bgcopy_step(self, name: str, max_segments: int) -> dict:
        """One BGCOPY step, copying on the calling thread (see bgcopy.py)."""
        return bgcopy.step(self, self.get(name), max_segments)

    def bgcopy_plan(self, name: str, max_segments: int):
        """A BGCOPY step in three parts: the returned Plan's ``io()`` may run in a
        worker thread, then ``finish()`` on the loop gives bgcopy_step's result;
        a dict instead of a Plan is a whole step's result already."""
        return bgcopy.plan(self, self.get(name), max_segments)

    def clone_state(self, name: str) -> dict:
        return snapclone.state(self.get(name))

    # ---- pool records ---------------------------------------------------------------
    def save_task(self, task: dict) -> None:
        """Records a task's state; durable with the next commit (flush)."""
        self.ops.save_task(task)

    def drop_task(self, task_id: int) -> None:
        self.ops.drop_task(task_id)

    def set_setting(self, key: str, value) -> None:
        """A pool-wide setting, durable when this returns."""
        self.ops.execute({"t": "set", "k": key, "v": value})

    # ---- drives ---------------------------------------------------------------------
    def fail_drive(self, index: int, why: str = "failed by command") -> None:
        """Marks a drive failed, durably: its RStores run degraded from now on."""
        if index not in self.drives:
            raise NotFound(f"no drive {index}")
        self.ops.execute({"t": "dfail", "d": index, "why": why})

    def add_drive(self, path: str, size: int | None = None, ldad: str = "default") -> dict:
        """Adds a drive (membership.py); its record. Durable when this returns."""
        return membership.add(self, path, size, ldad, self.opener)

    def remove_drive(self, index: int) -> int:
        """Starts emptying a drive for removal (membership.py); PSEGs to move."""
        return membership.leave(self, index)

    def set_drive_timeout(self, seconds: float) -> None:
        """Every drive's call timeout (Drive.timeout), drives added later too."""
        self.drive_timeout = seconds
        for d in self.drives.values():
            if hasattr(d, "timeout"):
                d.timeout = seconds

    def check_removable(self, index: int) -> None:
        """Raises with the reason when drive ``index`` cannot start leaving."""
        membership.check_removable(self, index)

    def finish_removals(self) -> list[int]:
        """Lets go of every leaving drive that holds nothing any more."""
        return membership.let_go(self)

    def restore_quorum(self) -> list[tuple[int, int]]:
        """Metadata copies on failed drives move to working ones: [(old, new)]."""
        return membership.restore_quorum(self)

    def mark_failed(self, index: int, why: str) -> None:
        self.drives[index].failed = True
        self.allocator.drives[index].failed = True
        self.failed_drives[index] = why
        if self.on_failure is not None:
            self.on_failure(index)

    def rebuild_plan(self, budget: int, skip: set):
        """A rebuild step in three parts, like ``bgcopy_plan`` (see rebuild.py);
        None when no damaged column outside ``skip`` is left."""
        return rebuild.plan(self, budget, skip)

    def rebuild_step(self, budget: int, skip: set | None = None) -> dict | None:
        """One whole rebuild step on the calling thread (tests, tools)."""
        p = rebuild.plan(self, budget, skip or set())
        if p is None:
            return None
        p.io()
        return p.finish()

    def level_plan(self, budget: int, skip: set):
        """A leveling step in three parts, like ``rebuild_plan`` (see level.py);
        None when every RSS is level or nothing can move."""
        return level.plan(self, budget, skip)

    def level_spread(self) -> float:
        """The widest used-fraction spread of an RSS's working drives."""
        return level.spread(self)

    def level_remaining(self) -> int:
        """About how many moves leveling has left."""
        return level.remaining(self)

    def level_step(self, budget: int) -> dict | None:
        """One whole leveling step on the calling thread (tests, tools)."""
        p = level.plan(self, budget, set())
        if p is None:
            return None
        p.io()
        return p.finish()

    def scrub_step(self, cursor: scrub.Cursor, budget: int) -> dict:
        """One scrub step (see scrub.py): about ``budget`` stripes checked and repaired."""
        return scrub.step(self, cursor, budget)

    def scrub_cursor(self) -> scrub.Cursor:
        """Where a new scrub starts, with the allocated stripes it is to check."""
        return scrub.Cursor(total=scrub.stripes(self))

    def damage(self) -> rebuild.Damage:
        """What failed drives took: columns to rebuild, columns lost."""
        return rebuild.survey(self)

    def sync_data(self) -> None:
        """fdatasync of every working drive; also safe from a worker thread (the task
        runner writes back dirty data before a commit, so the commit's sync is short)."""
        for d in list(self.drives.values()):
            if not d.failed:
                d.fsync()

    # ---- durability -----------------------------------------------------------------
    def flush(self) -> None:
        """Makes every earlier write and the map entries needed to read it durable."""
        self.tx.commit()

    def begin_flush(self):
        """``flush`` whose drive I/O may run in a worker thread (Transactions.begin_commit)."""
        return self.tx.begin_commit()

    def checkpoint(self) -> None:
        self.tx.checkpoint()

    def close(self) -> None:
        if self.closed:
            return
        self.stripes.drain()
        try:
            if not self.readonly and self.tx.failure() is None \
                    and not all(d.failed for d in self.meta.quorum.values()):
                self.tx.checkpoint()
        except VsanError as e:
            log.error("closing the pool: %s", e.message)
        finally:
            close_all(self.drives)
            self.closed = True

    # ---- introspection ----------------------------------------------------------------
    def map_bytes(self) -> int:
        """RAM held by LMAPs and RSD tables."""
        return (sum(ld.l2.nbytes() for ld in self.catalog.by_id.values())
                + sum(t.nbytes() for t in self.space.tables.values()))

    def status(self) -> dict:
        u = self.units
        return {"pool": self.pool_uuid, "units": u.to_dict(), "drives": membership.rows(self),
                "lds": [ld.info() for ld in self.catalog.by_id.values()],
                "free_bytes": self.allocator.free_psegs() * u.pseg,
                "state": "read-only: " + self.tx.failed if self.tx.failed
                else ("degraded" if self.failed_drives else "ok")}
