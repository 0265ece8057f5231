"""Segment allocation on top of RStores, RStore lifecycle, snapshot reservations,
member address lookup."""

from __future__ import annotations

import numpy as np

from ..errors import NoSpace
from ..mapping.lmap import DATA_MASK, SLOTS, entry_rsd, entry_slot, make_entry, rsds, slots
from ..mapping.rsd import RsdTable, member_drives, member_psegs, pack_member, unpack_member
from ..physical.allocator import RAID_WIDTH
from ..units import format_size
from .fence import ReadFence

MEMBER_CACHE_MAX = 1 << 16
FULL = (1 << SLOTS) - 1      # free-slot mask of an RStore with every slot free


class Space:
    def __init__(self, allocator, journal, units, rio):
        self.allocator = allocator
        self.rio = rio
        self.journal = journal
        self.units = units
        self.ops = None              # set by the pool: RStores change through ops.Ops
        self.fence = ReadFence()     # frees wait for the reads running off the loop
        self.tables: dict[tuple[int, str], RsdTable] = {}
        # segments promised to reserved LDs, not yet used, per (RAID type, LDAD):
        # a RAID1 promise needs 8 PSEGs per RStore whatever RAID type allocates next
        self.reserve: dict[tuple[int, str], int] = {}
        self._members: dict[tuple[int, str, int], list[tuple[int, int]]] = {}
        # Allocations a copy on first write handed to another LD since the last
        # commit: the committed maps still give them to the LD that had them, so
        # their new owner must not write them in place before that commit (cfw.py).
        self.handed: set[tuple[int, str, int]] = set()
        # Copies running off the loop through member lists fixed when they were
        # planned (BGCOPY steps): no member may be switched while any runs.
        self.pinned = 0

    def table(self, raid: int, ldad: str) -> RsdTable:
        t = self.tables.get((raid, ldad))
        if t is None:
            t = self.tables[(raid, ldad)] = RsdTable(raid, ldad)
        return t

    # ---- addresses ---------------------------------------------------------------
    def members(self, t: RsdTable, idx: int) -> list[tuple[int, int]]:
        """(drive, byte offset of the member PSEG) in RSD member order."""
        key = (t.raid, t.ldad, idx)
        m = self._members.get(key)
        if m is None:
            m = self.expand(t.raid, t.members(idx))
            if len(self._members) >= MEMBER_CACHE_MAX:
                self._members.clear()
            self._members[key] = m
        return m

    def forget_members(self, t: RsdTable, idx: int) -> None:
        self._members.pop((t.raid, t.ldad, idx), None)

    def expand(self, raid: int, stored: list[int]) -> list[tuple[int, int]]:
        q, p = self.units.quorum, self.units.pseg
        return [(d, q + g * p) for d, g in self.physical(raid, stored)]

    def physical(self, raid: int, stored: list[int]) -> list[tuple[int, int]]:
        """(drive, PSEG) of every member, RAID1 partners included."""
        out = []
        for s in stored:
            d, g = unpack_member(s)
            out.append((d, g))
            if raid == 1:
                out.append((self.allocator.partner(d), g))
        return out

    def physical_arrays(self, raid: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(drives, PSEGs) of every member of many RSD rows, RAID1 partners included."""
        drives, psegs = member_drives(rows).ravel(), member_psegs(rows).ravel()
        if raid == 1 and len(drives):
            uniq = np.unique(drives)
            partner = np.array([self.allocator.partner(d) for d in uniq.tolist()], dtype=np.int64)
            drives = np.concatenate([drives, partner[np.searchsorted(uniq, drives)]])
            psegs = np.concatenate([psegs, psegs])
        return drives, psegs

    def physical_rows(self, raid: int, rows: np.ndarray) -> list[tuple[int, int]]:
        drives, psegs = self.physical_arrays(raid, rows)
        return list(zip(drives.tolist(), psegs.tolist()))

    # ---- segments ----------------------------------------------------------------
    def alloc_segment(self, ld, use_reserve: bool = False) -> tuple[int, bool]:
        """(LMAP entry, fresh) for a new segment of ``ld``; ``fresh`` means its
        stripe already reads as zeros, so a partial write needs no zeroing first."""
        t = ld.table
        idx = ld.open_rsd
        got = None
        # The free slots of a table count for its reservations (reserved_psegs): an
        # allocation without a reservation may take one only while more are left
        # than are promised; otherwise it needs a new RStore from unreserved PSEGs.
        if use_reserve or t.nfree > self.reserve.get((t.raid, t.ldad), 0):
            got = t.take_slot(idx) if idx is not None else None
            if got is None:
                idx = t.any_free()
                if idx is not None:
                    got = t.take_slot(idx)
        if got is None:
            idx = self.new_rstore(t, use_reserve)
            got = t.take_slot(idx)
        ld.open_rsd = idx
        return make_entry(idx, got[0]), got[1]

    def new_rstore(self, t: RsdTable, use_reserve: bool = False) -> int:
        if not use_reserve and self.reserve:
            # counted after the RStore is made and its first slot taken
            gain = (t.raid, self.units.rstore_segments - 1)
            if self.allocator.free_psegs(t.ldad) - self.reserved_psegs(t.ldad, gain=gain) < RAID_WIDTH[t.raid]:
                raise NoSpace("free space is reserved for snapshots")
        placed = self.allocator.alloc_rstore(t.ldad, t.raid)
        if t.raid == 1:
            placed = placed[::2]
        idx = self.ops.add_rstore(t, [pack_member(d, g) for d, g in placed])
        # One hole punch per PSEG now spares one per member on each first write. Not
        # through the member cache: a thick create would fill it for nothing.
        for d, off in self.expand(t.raid, t.members(idx)):
            self.rio.drives[d].zero(off, self.units.pseg)
        t.mark_fresh(idx)
        return idx

    def hand_over(self, table: RsdTable, e: int) -> None:
        """Allocation ``e`` now belongs to another LD, in memory only."""
        self.handed.add((table.raid, table.ldad, e & DATA_MASK))

    def handed_over(self, table: RsdTable, e: int) -> bool:
        return bool(self.handed) and (table.raid, table.ldad, e & DATA_MASK) in self.handed

    def free_segment(self, ld, e: int) -> None:
        """The slot returns to its RStore only after the commit that unmaps it."""
        self.journal.slots.append((ld.table, entry_rsd(e), entry_slot(e)))

    def release_now(self, t: RsdTable, entries: np.ndarray) -> None:
        """Slots that a durable record already unmapped (a delete, a shrink): free
        once no read that may have resolved them runs, grouped per RStore, so 1 TiB
        costs numpy work, not a loop."""
        e = np.asarray(entries, dtype=np.uint32)
        if len(e):
            self.fence.after_reads(lambda: self._put_slots(t, rsds(e), slots(e)))

    def release_committed(self, slots_: list, ids: list, bulk: list) -> None:
        """After a commit: frees what that commit made unreferenced, once no read
        that may have resolved it runs."""
        self.fence.after_reads(lambda: self._release(slots_, ids, bulk))

    def _release(self, slots_: list, ids: list, bulk: list) -> None:
        for t, idx in ids:
            t.release_id(idx)
        for t, idx, slot in slots_:
            if t.put_slot(idx, slot):
                self.ops.drop_rstore(t, idx)
        for t, idx, slot in bulk:
            self._put_slots(t, idx, slot)

    def _put_slots(self, t: RsdTable, idx: np.ndarray, slot: np.ndarray) -> None:
        uniq, inv = np.unique(idx, return_inverse=True)
        masks = np.zeros(len(uniq), dtype=np.int64)
        np.bitwise_or.at(masks, inv, np.left_shift(1, slot))
        full = []
        for i, m in zip(uniq.tolist(), masks.tolist()):
            if t.put_slots(i, m) == FULL:
                full.append(i)
        if len(full) < 64:
            for i in full:
                self.ops.drop_rstore(t, i)
        elif full:
            self.ops.drop_rstores(t, np.asarray(full, dtype=np.int64))

    # ---- reservations ------------------------------------------------------------
    @property
    def reserve_segs(self) -> int:
        return sum(self.reserve.values())

    def promise(self, ld, segs: int) -> None:
        """What is still reserved for ``ld`` becomes ``segs`` segments."""
        old = getattr(ld, "reserve_left", 0)
        ld.reserve_left = segs
        key = (ld.raid, ld.ldad)
        n = max(0, self.reserve.get(key, 0) + segs - old)
        if n:
            self.reserve[key] = n
        else:
            self.reserve.pop(key, None)

    def note_handover(self, ld) -> None:
        """A reserved LD received one segment of its reservation."""
        if ld.role.reserved and getattr(ld, "reserve_left", 0) > 0:
            self.promise(ld, ld.reserve_left - 1)

    def reserved_psegs(self, ldad: str, extra: tuple[int, int] | None = None,
                       gain: tuple[int, int] | None = None) -> int:
        """PSEGs the promises in ``ldad`` (plus ``extra`` = (RAID type, segments)) need
        beyond the free slots of their tables (plus ``gain`` = (RAID type, slots)
        about to be added): alloc_segment keeps those slots for them."""
        segs = {r: n for (r, l), n in self.reserve.items() if l == ldad}
        if extra:
            segs[extra[0]] = segs.get(extra[0], 0) + extra[1]
        per = self.units.rstore_segments
        out = 0
        for r, n in segs.items():
            t = self.tables.get((r, ldad))
            n -= (t.nfree if t is not None else 0) + (gain[1] if gain and gain[0] == r else 0)
            out += -(-max(0, n) // per) * RAID_WIDTH[r]
        return out

    def drive_bytes(self, raid: int, size: int) -> int:
        """Drive space ``size`` bytes of RAID ``raid`` take once all written."""
        return -(-size // self.units.rstore) * RAID_WIDTH[raid] * self.units.pseg

    def capacity(self, ldad: str) -> int:
        """Bytes of the working drives of ``ldad`` (failed and leaving ones left out)."""
        return sum(d.npsegs for d in self.allocator.drives.values()
                   if d.ldad == ldad and not d.failed and not d.leaving) * self.units.pseg

    def check_room(self, ldad: str, raid: int, segments: int) -> None:
        """Raises NoSpace unless ``segments`` more segments could be allocated now."""
        t = self.table(raid, ldad)
        need = max(0, segments - t.nfree)
        rstores = -(-need // self.units.rstore_segments)
        need_psegs, free = rstores * RAID_WIDTH[raid], self.allocator.free_psegs(ldad)
        if need_psegs > free:
            pseg, size = self.units.pseg, format_size(segments * self.units.segment)
            raise NoSpace(f"not enough free space in LDAD {ldad!r} for {size} "
                          f"of RAID{raid}: it needs {format_size(need_psegs * pseg)} of drive space "
                          f"(redundancy included), {format_size(free * pseg)} is free")
