"""Segment allocation on top of RStores; RStore lifecycle; member address lookup."""

from __future__ import annotations

from ..errors import NoSpace
from ..mapping.lmap import entry_rsd, entry_slot, make_entry
from ..mapping.rsd import RsdTable, pack_member, unpack_member

MEMBER_CACHE_MAX = 1 << 16


class Space:
    def __init__(self, allocator, journal, units, rio):
        self.allocator = allocator
        self.rio = rio
        self.journal = journal
        self.units = units
        self.tables: dict[tuple[int, str], RsdTable] = {}
        self.reserve_segs = 0   # segments promised to reserved snapshots, not yet used
        self._members: dict[tuple[int, str, int], list[tuple[int, int]]] = {}

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

    def expand(self, raid: int, stored: list[int]) -> list[tuple[int, int]]:
        q, p = self.units.quorum, self.units.pseg
        out = []
        for s in stored:
            d, g = unpack_member(s)
            out.append((d, q + g * p))
            if raid == 1:
                out.append((self.allocator.partner(d), q + g * p))
        return out

    def physical(self, raid: int, stored: list[int]) -> list[tuple[int, int]]:
        """(drive, PSEG) of every member, RAID1 partners included."""
        out = []
        for s in stored:
            d, g = unpack_member(s)
            out.append((d, g))
            if raid == 1:
                out.append((self.allocator.partner(d), g))
        return out

    # ---- segments ----------------------------------------------------------------
    def alloc_segment(self, ld, use_reserve: bool = False) -> tuple[int, bool]:
        """(LMAP entry, fresh) for a new segment of ``ld``; ``fresh`` means its
        stripe already reads as zeros, so a partial write needs no zeroing first."""
        t = self.table(ld.raid, ld.ldad)
        idx = ld.open_rsd
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

    def reserved_psegs(self, raid: int) -> int:
        rstores = -(-self.reserve_segs // self.units.rstore_segments)
        return rstores * {0: 4, 5: 5, 1: 8}[raid]

    def note_handover(self, snap) -> None:
        """A reserved snapshot received one segment of its reservation."""
        if snap.attrs.get("space") == "reserve" and self.reserve_segs > 0:
            self.reserve_segs -= 1

    def new_rstore(self, t: RsdTable, use_reserve: bool = False) -> int:
        if not use_reserve and self.reserve_segs:
            width = {0: 4, 5: 5, 1: 8}[t.raid]
            if self.allocator.free_psegs(t.ldad) - self.reserved_psegs(t.raid) < width:
                raise NoSpace("free space is reserved for snapshots")
        placed = self.allocator.alloc_rstore(t.ldad, t.raid)
        if t.raid == 1:
            placed = placed[::2]
        stored = [pack_member(d, g) for d, g in placed]
        idx = t.add(stored)
        # One hole punch per PSEG now spares one per member on each first write.
        for d, off in self.members(t, idx):
            self.rio.drives[d].zero(off, self.units.pseg)
        t.mark_fresh(idx)
        self.journal.add({"t": "rsa", "raid": t.raid, "ldad": t.ldad, "i": idx, "m": stored})
        return idx

    def free_segment(self, ld, e: int) -> None:
        """The slot returns to its RStore only after the commit that unmaps it."""
        self.journal.slots.append((self.table(ld.raid, ld.ldad), entry_rsd(e), entry_slot(e)))

    def free_entries(self, ld, entries) -> None:
        """Bulk free of many allocated entries (delete): parked until the commit."""
        t = self.table(ld.raid, ld.ldad)
        for e in entries.tolist():
            self.journal.slots.append((t, entry_rsd(e), entry_slot(e)))

    def release_committed(self, nslots: int, nids: int) -> None:
        """Called after a commit: frees what that commit made unreferenced."""
        j = self.journal
        for t, idx in j.rsd_ids[:nids]:
            t.release_id(idx)
        del j.rsd_ids[:nids]
        for t, idx, slot in j.slots[:nslots]:
            if t.put_slot(idx, slot):
                self.drop_rstore(t, idx)
        del j.slots[:nslots]

    def drop_rstore(self, t: RsdTable, idx: int) -> None:
        """An RStore with no used slot goes back to the pool (durable at next commit)."""
        stored = t.remove(idx)
        self._members.pop((t.raid, t.ldad, idx), None)
        for d, g in self.physical(t.raid, stored):
            self.allocator.free_later(d, g)
        self.journal.rsd_ids.append((t, idx))
        self.journal.add({"t": "rsr", "raid": t.raid, "ldad": t.ldad, "i": idx})

    def check_room(self, ldad: str, raid: int, segments: int) -> None:
        """Raises NoSpace unless ``segments`` more segments could be allocated now."""
        t = self.table(raid, ldad)
        free_slots = sum(bin(m).count("1") for m in t.free_slots.values())
        need = max(0, segments - free_slots)
        rstores = -(-need // self.units.rstore_segments)
        width = {0: 4, 5: 5, 1: 8}[raid]
        if rstores * width > self.allocator.free_psegs(ldad):
            raise NoSpace(f"not enough free space in LDAD {ldad!r} for {segments} MiB of RAID{raid}")
