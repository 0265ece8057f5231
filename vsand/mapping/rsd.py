"""RSD tables: RStore descriptors in compact chunked arrays, one table per
(RAID type, LDAD).

A member is stored as one uint32, ``drive << 24 | pseg`` (256 drives, 16M PSEGs
= 32 TiB per drive). RAID1 stores only the first copy of each of its 4 columns:
the second copy sits on the partner drive of the RSS pair at the same PSEG number
(the allocator takes pair PSEGs in lock step), so RAID1 costs 16 bytes per 8 MiB
like RAID0 instead of 32. Per mapped MiB: RAID0 and RAID1 2 bytes, RAID5 2.5.

Chunks of a fixed row count keep growth from doubling memory, and a freed RSD
index is reused only after the transaction that freed it commits.
"""

from __future__ import annotations

import numpy as np

STORED_WIDTH = {0: 4, 1: 4, 5: 5}
MAX_PSEGS = 1 << 24          # PSEG numbers a member can name: 32 TiB per drive
DEAD = 0xFFFFFFFF
CHUNK = 16384


def pack_member(drive: int, pseg: int) -> int:
    assert 0 <= drive < 256 and 0 <= pseg < (1 << 24)
    return (drive << 24) | pseg


def unpack_member(m: int) -> tuple[int, int]:
    return m >> 24, m & 0xFFFFFF


def member_drives(rows: np.ndarray) -> np.ndarray:
    """Drive index of every stored member in ``rows``, in bulk."""
    return (rows >> 24).astype(np.int64)


def member_psegs(rows: np.ndarray) -> np.ndarray:
    return (rows & 0xFFFFFF).astype(np.int64)


class RsdTable:
    def __init__(self, raid: int, ldad: str):
        self.raid = raid
        self.ldad = ldad
        self.width = STORED_WIDTH[raid]
        self.chunks: list[np.ndarray] = []
        self.count = 0               # indices < count have been handed out at least once
        self.free_ids: list[int] = []
        self.free_slots: dict[int, int] = {}  # live RStores with free slots: idx -> bitmask
        # Their count: reservations are kept in free slots too (Space.reserved_psegs),
        # and counting the bitmasks at each allocation would cost a pass over them.
        self.nfree = 0
        self.fresh: dict[int, int] = {}       # free slots known to read as zeros on disk

    def _row(self, idx: int) -> np.ndarray:
        return self.chunks[idx // CHUNK][idx % CHUNK]

    def members(self, idx: int) -> list[int]:
        return self._row(idx).tolist()

    def alive(self, idx: int) -> bool:
        return idx < self.count and int(self._row(idx)[0]) != DEAD

    def add(self, members: list[int], idx: int | None = None) -> int:
        """Stores a new RStore (all slots free); ``idx`` forces the index (log replay)."""
        if idx is None:
            idx = self.free_ids.pop() if self.free_ids else self.count
        while idx >= len(self.chunks) * CHUNK:
            self.chunks.append(np.full((CHUNK, self.width), DEAD, dtype=np.uint32))
        self.count = max(self.count, idx + 1)
        assert not self.alive(idx), f"RSD {idx} already alive"
        self._row(idx)[:] = members
        self.free_slots[idx] = 0xFF
        self.nfree += 8
        return idx

    def set_member(self, idx: int, col: int, member: int) -> int:
        """Replaces stored member ``col`` of a live RStore; returns the old one."""
        assert self.alive(idx), f"RSD {idx} is not alive"
        row = self._row(idx)
        old = int(row[col])
        row[col] = member
        return old

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """The stored members of many RStores at once, one row each."""
        out = np.empty((len(idx), self.width), dtype=np.uint32)
        chunk = idx // CHUNK
        for c in np.unique(chunk).tolist():
            sel = chunk == c
            out[sel] = self.chunks[c][idx[sel] % CHUNK]
        return out

    def remove_many(self, idx: np.ndarray) -> np.ndarray:
        """``remove`` for many RStores; returns their rows."""
        rows = self.rows(idx)
        chunk = idx // CHUNK
        for c in np.unique(chunk).tolist():
            self.chunks[c][idx[chunk == c] % CHUNK] = DEAD
        for i in idx.tolist():
            self.nfree -= self.free_slots.pop(i, 0).bit_count()
            self.fresh.pop(i, None)
        return rows

    def live_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, rows) of every live RStore."""
        live = self.live_indices()
        if not len(live):
            return live, np.zeros((0, self.width), np.uint32)
        return live, self.rows(live)

    def blocks(self, size: int = CHUNK):
        """(first index, rows, live mask) of the handed-out rows, ``size`` rows (at
        most a chunk) at a time: views, so a walk over the table in bulk copies none
        of it, and its temporaries stay bounded."""
        assert CHUNK % size == 0, "a block never straddles two chunks"
        for base in range(0, self.count, size):
            ch = self.chunks[base // CHUNK]
            o = base % CHUNK
            rows = ch[o:o + min(size, CHUNK - o, self.count - base)]
            yield base, rows, rows[:, 0] != DEAD

    def mark_fresh(self, idx: int) -> None:
        """The RStore's PSEGs were just zeroed: its free slots need no zeroing."""
        self.fresh[idx] = self.free_slots.get(idx, 0)

    def remove(self, idx: int) -> list[int]:
        row = self._row(idx)
        old = row.tolist()
        row[:] = DEAD
        self.nfree -= self.free_slots.pop(idx, 0).bit_count()
        self.fresh.pop(idx, None)
        return old

    def release_id(self, idx: int) -> None:
        self.free_ids.append(idx)

    def take_slot(self, idx: int) -> tuple[int, bool] | None:
        """(slot, fresh) for a free slot of RStore ``idx``, or None."""
        mask = self.free_slots.get(idx, 0)
        if not mask:
            return None
        slot = (mask & -mask).bit_length() - 1
        bit = 1 << slot
        mask &= ~bit
        self.nfree -= 1
        if mask:
            self.free_slots[idx] = mask
        else:
            del self.free_slots[idx]
        fm = self.fresh.get(idx, 0)
        if fm & bit:
            fm &= ~bit
            if fm:
                self.fresh[idx] = fm
            else:
                del self.fresh[idx]
            return slot, True
        return slot, False

    def put_slot(self, idx: int, slot: int) -> bool:
        """Marks a slot free; True when the whole RStore is now free."""
        return self.put_slots(idx, 1 << slot) == 0xFF

    def put_slots(self, idx: int, mask: int) -> int:
        """Marks the slots of ``mask`` free; returns the RStore's free mask."""
        old = self.free_slots.get(idx, 0)
        new = old | mask
        self.free_slots[idx] = new
        self.nfree += (new & ~old).bit_count()
        return new

    def set_free(self, free_slots: dict[int, int]) -> None:
        """The free slots of every live RStore, as recovery derives them."""
        self.free_slots = free_slots
        self.nfree = sum(m.bit_count() for m in free_slots.values())

    def any_free(self) -> int | None:
        for idx in self.free_slots:
            return idx
        return None

    def live_indices(self) -> np.ndarray:
        parts = [np.flatnonzero(live) + base for base, _, live in self.blocks()]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def dump(self) -> tuple[int, list[np.ndarray]]:
        """(count, rows [0, count) as views of the chunks) for a checkpoint; the
        chunks' bytes joined are the rows as one array's ``tobytes``."""
        return self.count, [rows for _, rows, _ in self.blocks()]

    def load(self, count: int, data) -> None:
        """The table a checkpoint holds: ``count`` rows in ``data``. A writable
        ``data`` (a bytearray from the checkpoint reader) is taken over in place,
        its whole chunks as views, so loading costs no second copy of the table."""
        rows = np.frombuffer(data, dtype=np.uint32).reshape(count, self.width) if count else None
        self.chunks = []
        self.count = 0
        if count:
            nchunks = -(-count // CHUNK)
            for c in range(nchunks):
                part = rows[c * CHUNK:(c + 1) * CHUNK]
                if len(part) == CHUNK and part.flags.writeable:
                    self.chunks.append(part)
                    continue
                ch = np.full((CHUNK, self.width), DEAD, dtype=np.uint32)
                ch[: len(part)] = part
                self.chunks.append(ch)
            self.count = count
        self.free_ids = np.flatnonzero(rows[:, 0] == DEAD).tolist() if count else []

    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.chunks)
