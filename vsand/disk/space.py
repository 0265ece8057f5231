"""Segment allocation on top of RStores; RStore lifecycle; member address lookup."""

from __future__ import annotations

import numpy as np

from ..errors import NoSpace
from ..mapping.lmap import RSD_MASK, RSD_SHIFT, SLOT_MASK, entry_rsd, entry_slot, make_entry
from ..mapping.rsd import CHUNK, DEAD, RsdTable, pack_member, unpack_member
from ..physical.allocator import RAID_WIDTH

MEMBER_CACHE_MAX = 1 << 16


class Space:
    def __init__(self, allocator, journal, units, rio):
        self.allocator = allocator
        self.rio = rio
        self.journal = journal
        self.units = units
        self.tables: dict[tuple[int, str], RsdTable] = {}
        # segments promised to reserved snapshots, not yet used, per (RAID type, LDAD):
        # a RAID1 promise needs 8 PSEGs per RStore whatever RAID type allocates next
        self.reserve: dict[tuple[int, str], int] = {}
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

    @property
    def reserve_segs(self) -> int:
        return sum(self.reserve.values())

    def add_reserve(self, raid: int, ldad: str, segs: int) -> None:
        n = max(0, self.reserve.get((raid, ldad), 0) + segs)
        if n:
            self.reserve[(raid, ldad)] = n
        else:
            self.reserve.pop((raid, ldad), None)

    def reserved_psegs(self, ldad: str, extra: tuple[int, int] | None = None) -> int:
        """PSEGs the promises in ``ldad`` (plus ``extra`` = (RAID type, segments)) need."""
        segs = {r: n for (r, l), n in self.reserve.items() if l == ldad}
        if extra:
            segs[extra[0]] = segs.get(extra[0], 0) + extra[1]
        per = self.units.rstore_segments
        return sum(-(-n // per) * RAID_WIDTH[r] for r, n in segs.items())

    def note_handover(self, snap) -> None:
        """A reserved snapshot received one segment of its reservation."""
        if snap.attrs.get("space") == "reserve" and getattr(snap, "reserve_left", 0) > 0:
            snap.reserve_left -= 1
            self.add_reserve(snap.raid, snap.ldad, -1)

    def new_rstore(self, t: RsdTable, use_reserve: bool = False) -> int:
        if not use_reserve and self.reserve_segs:
            width = RAID_WIDTH[t.raid]
            if self.allocator.free_psegs(t.ldad) - self.reserved_psegs(t.ldad) < width:
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
        """Bulk free of many allocated entries (delete): parked, as arrays, until the
        commit (``release_committed``), so 1 TiB costs numpy work, not a loop."""
        e = np.asarray(entries, dtype=np.int64)
        if len(e):
            self.journal.bulk_slots.append((self.table(ld.raid, ld.ldad),
                                            (e >> RSD_SHIFT) & RSD_MASK, e & SLOT_MASK))

    def release_committed(self, nslots: int, nids: int, nbulk: int = 0) -> None:
        """Called after a commit: frees what that commit made unreferenced."""
        j = self.journal
        for t, idx in j.rsd_ids[:nids]:
            t.release_id(idx)
        del j.rsd_ids[:nids]
        for t, idx, slot in j.slots[:nslots]:
            if t.put_slot(idx, slot):
                self.drop_rstore(t, idx)
        del j.slots[:nslots]
        for t, idx, slot in j.bulk_slots[:nbulk]:
            self._put_slots(t, idx, slot)
        del j.bulk_slots[:nbulk]

    def _put_slots(self, t: RsdTable, idx: np.ndarray, slot: np.ndarray) -> None:
        """``put_slot`` for many (RSD index, slot) pairs, grouped per RStore."""
        uniq, inv = np.unique(idx, return_inverse=True)
        masks = np.zeros(len(uniq), dtype=np.int64)
        np.bitwise_or.at(masks, inv, np.left_shift(1, slot))
        fs = t.free_slots
        full = []
        for i, m in zip(uniq.tolist(), masks.tolist()):
            m |= fs.get(i, 0)
            fs[i] = m
            if m == 0xFF:
                full.append(i)
        if len(full) < 64:
            for i in full:
                self.drop_rstore(t, i)
        elif full:
            self._drop_rstores(t, np.asarray(full, dtype=np.int64))

    def _drop_rstores(self, t: RsdTable, idx: np.ndarray) -> None:
        """``drop_rstore`` for many RStores of one table: one "rsr" record for all."""
        rows = np.empty((len(idx), t.width), dtype=np.uint32)
        chunk = idx // CHUNK
        for c in np.unique(chunk).tolist():
            sel = chunk == c
            r = idx[sel] % CHUNK
            rows[sel] = t.chunks[c][r]
            t.chunks[c][r] = DEAD
        key = (t.raid, t.ldad)
        for i in idx.tolist():
            t.free_slots.pop(i, None)
            t.fresh.pop(i, None)
            self._members.pop((*key, i), None)
        drives = (rows >> 24).astype(np.int64).ravel()
        psegs = (rows & 0xFFFFFF).astype(np.int64).ravel()
        if t.raid == 1:
            partner = {d: self.allocator.partner(d) for d in np.unique(drives).tolist()}
            drives = np.concatenate([drives, np.array([partner[d] for d in drives.tolist()],
                                                      dtype=np.int64)])
            psegs = np.concatenate([psegs, psegs])
        self.allocator.pending.extend(zip(drives.tolist(), psegs.tolist()))
        self.journal.rsd_ids.extend((t, i) for i in idx.tolist())
        self.journal.add({"t": "rsr", "raid": t.raid, "ldad": t.ldad,
                          "is": idx.astype(np.uint32).tobytes()})

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
        width = RAID_WIDTH[raid]
        if rstores * width > self.allocator.free_psegs(ldad):
            raise NoSpace(f"not enough free space in LDAD {ldad!r} for {segments} MiB of RAID{raid}")
