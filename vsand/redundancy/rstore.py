"""I/O on one segment (= one stripe) of an RStore, healthy or degraded.

``members`` is a sequence of (drive index, byte offset of the member PSEG on that
drive) in RSD member order (see geometry). A drive with ``failed`` set is treated
as absent: RAID1 uses the other copy, RAID5 reconstructs from the other columns
(at most one failed member per stripe), RAID0 fails with EIO.

A member call that fails (IOFailure) is reported to ``on_error(drive, exc,
fail)``, the pool's failure detection (DESIGN.md §5), which counts it and may fail
the drive. ``fail`` asks for the drive to be failed at once: a member that missed a
write holds stale data that nothing could tell from good data. A read that fails
on RAID1/5 is then served from redundancy, as if the member were absent; a write
goes on with the other members, so that the stripe holds the new data.

A member being copied elsewhere (rebuild, leveling) is ``watch``ed: every write
or zeroing of its RStore's stripes from then on is noted, by the stripe, so the
mover can copy those stripes again before it switches the member.
"""

from __future__ import annotations

import numpy as np

from ..errors import IOFailure
from ..faults import crashpoint
from .geometry import DATA_COLUMNS, data_members, parity_member, split
from .parity import xor_all

Members = list[tuple[int, int]]


class _Degraded(Exception):
    """A RAID5 write met a read error before writing anything: its drive is failed
    now, and the write starts again on the degraded stripe."""


class RStoreIO:
    def __init__(self, drives: dict, stripe_unit: int):
        self.drives = drives
        self.su = stripe_unit
        self.on_error = None        # (drive index, IOFailure, fail at once) -> None
        # RStores being copied, by their first member, and the (first member, slot)
        # written since; sets, so writer threads need no lock (add is atomic)
        self.watched: set = set()
        self.touched: set = set()

    def watch(self, members: Members) -> None:
        self.watched.add(members[0])

    def unwatch(self, members: Members) -> list[int]:
        """Ends a watch: the slots written since it began."""
        key = members[0]
        self.watched.discard(key)
        slots = sorted(s for k, s in list(self.touched) if k == key)
        for s in slots:
            self.touched.discard((key, s))
        return slots

    def _note(self, members: Members, slot: int) -> None:
        if members[0] in self.watched:
            self.touched.add((members[0], slot))

    def _ok(self, member: tuple[int, int]) -> bool:
        return not self.drives[member[0]].failed

    def _error(self, d: int, exc: IOFailure, fail: bool) -> None:
        if self.on_error is not None:
            self.on_error(d, exc, fail)

    def _pread(self, member, slot: int, uo: int, n: int) -> bytes:
        try:
            return self.drives[member[0]].pread(member[1] + slot * self.su + uo, n)
        except IOFailure as e:
            self._error(member[0], e, False)
            raise

    def _pwrite(self, member, slot: int, uo: int, data) -> None:
        self.drives[member[0]].pwrite(member[1] + slot * self.su + uo, data)

    def _put(self, member, slot: int, uo: int, data) -> None:
        """A member write of a RAID1/5 stripe: a failure fails the drive and the
        write goes on without it (the other members still make the stripe whole)."""
        try:
            self._pwrite(member, slot, uo, data)
        except IOFailure as e:
            self._error(member[0], e, True)
            if self._ok(member):     # not failed (no detection, or another thread's I/O)
                raise

    # ---- read --------------------------------------------------------------------
    def read(self, raid: int, members: Members, slot: int, off: int, n: int) -> bytes:
        su = self.su
        col, uo = divmod(off, su)
        if uo + n <= su:   # hot path: inside one stripe unit
            if raid == 0:
                d, base = members[col]
                drive = self.drives[d]
                if not drive.failed:
                    try:
                        return drive.pread(base + slot * su + uo, n)
                    except IOFailure as e:
                        self._error(d, e, False)
                        raise
            return self._read_col(raid, members, slot, col, uo, n)
        buf = bytearray(n)
        self.read_into(raid, members, slot, off, memoryview(buf))
        return buf

    def read_into(self, raid: int, members: Members, slot: int, off: int, out: memoryview) -> None:
        """Reads segment bytes [off, off+len(out)) straight into ``out``."""
        for col, uo, bo, k in split(off, len(out), self.su):
            m = self._healthy_member(raid, members, slot, col)
            if m is not None:
                try:
                    self.drives[m[0]].readinto(m[1] + slot * self.su + uo, out[bo:bo + k])
                    continue
                except IOFailure as e:
                    self._error(m[0], e, False)
                    if raid == 0:
                        raise
            out[bo:bo + k] = self._read_col(raid, members, slot, col, uo, k, avoid=m)

    def plan(self, raid: int, members: Members, slot: int, off: int, n: int, bo: int,
             out: list) -> bool:
        """Appends (drive, byte offset, ``bo`` + offset in the range, length) for a
        plain read of segment bytes [off, off+n); False (nothing appended that
        matters) when a column needs recovery from redundancy."""
        su = self.su
        col, uo = divmod(off, su)
        if raid == 0 and uo + n <= su:   # hot path: inside one stripe unit
            d, base = members[col]
            drive = self.drives[d]
            if drive.failed:
                return False
            out.append((drive, base + slot * su + uo, bo, n))
            return True
        for col, uo, pbo, k in split(off, n, su):
            m = self._healthy_member(raid, members, slot, col)
            if m is None:
                return False
            out.append((self.drives[m[0]], m[1] + slot * su + uo, bo + pbo, k))
        return True

    def _healthy_member(self, raid, members, slot, col):
        """The member a plain read of ``col`` uses, or None when it needs recovery."""
        if raid == 1:
            a, b = members[2 * col], members[2 * col + 1]
            if (slot + col) & 1:
                a, b = b, a
            return a if self._ok(a) else (b if self._ok(b) else None)
        m = members[data_members(raid, slot, col)[0]]
        return m if self._ok(m) else None

    def _read_col(self, raid, members, slot, col, uo, n, avoid=None) -> bytes:
        """Column ``col``'s bytes, from redundancy when its member is failed, is
        ``avoid`` (a read of it just failed) or fails now."""
        if raid == 1:
            a, b = members[2 * col], members[2 * col + 1]
            if (slot + col) & 1:  # spread reads over both copies
                a, b = b, a
            for m in (a, b):
                if m is not avoid and self._ok(m):
                    try:
                        return self._pread(m, slot, uo, n)
                    except IOFailure:
                        avoid = m
            raise IOFailure(f"RAID1 column {col}: no copy could be read")
        m = members[data_members(raid, slot, col)[0]]
        if m is not avoid and self._ok(m):
            try:
                return self._pread(m, slot, uo, n)
            except IOFailure:
                if raid == 0:
                    raise
        if raid == 0:
            raise IOFailure(f"RAID0 member on failed drive {m[0]}")
        return self._reconstruct(members, slot, m, uo, n)

    def _reconstruct(self, members, slot, missing, uo, n) -> bytes:
        others = [m for m in members if m is not missing]
        if not all(self._ok(m) for m in others):
            raise IOFailure("RAID5 stripe lost two members")
        try:
            return xor_all([self._pread(m, slot, uo, n) for m in others], n)
        except IOFailure as e:
            raise IOFailure(f"RAID5 stripe lost two members ({e.message})") from e

    # ---- write -------------------------------------------------------------------
    def write(self, raid: int, members: Members, slot: int, off: int, data) -> None:
        if self.watched:
            self._note(members, slot)
        su = self.su
        if raid == 0:
            col, uo = divmod(off, su)
            if uo + len(data) <= su:   # hot path: inside one stripe unit
                d, base = members[col]
                drive = self.drives[d]
                if not drive.failed:
                    try:
                        drive.pwrite(base + slot * su + uo, data)
                    except IOFailure as e:
                        self._error(d, e, False)
                        raise
                    return
        mv = memoryview(data)
        if not len(mv):
            return
        pieces = split(off, len(mv), self.su)
        if raid == 5:
            self._write5(members, slot, pieces, mv)
            return
        for j, (col, uo, bo, k) in enumerate(pieces):
            if j:
                crashpoint("rstore.between_columns")
            targets = [members[i] for i in data_members(raid, slot, col)]
            live = [t for t in targets if self._ok(t)]
            if not live:
                raise IOFailure(f"RAID{raid} column {col}: no live member")
            if raid == 0:
                try:
                    self._pwrite(live[0], slot, uo, mv[bo:bo + k])
                except IOFailure as e:
                    self._error(live[0][0], e, False)
                    raise
                continue
            for i, t in enumerate(live):
                if i:
                    crashpoint("raid1.between_copies")
                self._put(t, slot, uo, mv[bo:bo + k])
            if not any(self._ok(t) for t in live):
                raise IOFailure(f"RAID1 column {col}: no copy could be written")

    def _write5(self, members, slot, pieces, mv) -> None:
        try:
            self._write5_once(members, slot, pieces, mv)
        except _Degraded:                 # a read before any write failed its drive
            try:
                self._write5_once(members, slot, pieces, mv)
            except _Degraded as e:
                raise IOFailure("RAID5 stripe lost two members") from e
        # Two members that this write should have written are gone: the stripe
        # cannot give its data back.
        touched = [members[data_members(5, slot, col)[0]] for col, _, _, _ in pieces]
        touched.append(members[parity_member(slot)])
        if sum(not self._ok(m) for m in touched) > 1:
            raise IOFailure("RAID5 stripe lost two members")

    def _get5(self, member, slot: int, uo: int, n: int) -> bytes:
        """A read that a RAID5 write needs before it writes: a failure fails the
        drive (the write cannot wait for a rebuild) and the write starts again,
        degraded."""
        try:
            return self.drives[member[0]].pread(member[1] + slot * self.su + uo, n)
        except IOFailure as e:
            self._error(member[0], e, True)
            if self._ok(member):
                raise
            raise _Degraded() from e

    def _write5_once(self, members, slot, pieces, mv) -> None:
        su = self.su
        pm = members[parity_member(slot)]
        full = len(pieces) == DATA_COLUMNS and all(uo == 0 and k == su for _, uo, _, k in pieces)
        cols = {col: (uo, bo, k, members[data_members(5, slot, col)[0]]) for col, uo, bo, k in pieces}
        failed_data = [c for c, (_, _, _, m) in cols.items() if not self._ok(m)]
        if full:
            parity = xor_all((mv[bo:bo + k] for _, _, bo, k in pieces), su)
            for col, (uo, bo, k, m) in cols.items():
                if self._ok(m):
                    self._put(m, slot, uo, mv[bo:bo + k])
            crashpoint("raid5.between_data_parity")
            if self._ok(pm):
                self._put(pm, slot, 0, parity)
            return
        plo = min(uo for uo, _, _, _ in cols.values())
        phi = max(uo + k for uo, _, k, _ in cols.values())
        if not self._ok(pm):
            # No parity to keep: write the data columns only.
            for uo, bo, k, m in cols.values():
                self._put(m, slot, uo, mv[bo:bo + k])
            return
        if failed_data:
            self._reconstruct_write(members, slot, cols, mv, plo, phi, pm)
            return
        # Read-modify-write: new parity = old parity ^ old data ^ new data.
        acc = np.frombuffer(self._get5(pm, slot, plo, phi - plo), dtype=np.uint8).copy()
        for uo, bo, k, m in cols.values():
            old = np.frombuffer(self._get5(m, slot, uo, k), dtype=np.uint8)
            new = np.frombuffer(mv[bo:bo + k], dtype=np.uint8)
            acc[uo - plo:uo - plo + k] ^= old ^ new
        for uo, bo, k, m in cols.values():
            self._put(m, slot, uo, mv[bo:bo + k])
        crashpoint("raid5.between_data_parity")
        self._put(pm, slot, plo, acc.tobytes())

    def _reconstruct_write(self, members, slot, cols, mv, plo, phi, pm) -> None:
        """Degraded write that touches the failed column: rebuild the stripe region
        from what survives, merge the new data, and write parity for all of it."""
        n = phi - plo
        region = []
        for col in range(DATA_COLUMNS):
            cur = np.frombuffer(self._read_col(5, members, slot, col, plo, n), dtype=np.uint8).copy()
            if col in cols:
                uo, bo, k, _ = cols[col]
                cur[uo - plo:uo - plo + k] = np.frombuffer(mv[bo:bo + k], dtype=np.uint8)
            region.append(cur)
        for col in range(DATA_COLUMNS):
            m = members[data_members(5, slot, col)[0]]
            if col in cols and self._ok(m):
                self._put(m, slot, plo, region[col].tobytes())
        self._put(pm, slot, plo, xor_all(region, n))

    # ---- moving a member ------------------------------------------------------------
    def copy_member(self, raid: int, members: Members, col: int, targets: Members,
                    slots: list[int]) -> int:
        """Writes the bytes of stored column ``col`` (RAID5: member ``col``; RAID1:
        the copies 2col and 2col+1) in stripes ``slots`` to every member of
        ``targets``: read from a healthy copy of it, else rebuilt from the others.
        Contiguous stripes move in one read and one write per drive. Returns the
        bytes written; raises IOFailure when they cannot be had or written."""
        if raid == 1:
            sources = [m for m in members[2 * col:2 * col + 2] if self._ok(m)]
        else:
            sources = [members[col]] if self._ok(members[col]) else []
        if raid == 5 and not sources:
            others = [m for i, m in enumerate(members) if i != col]
            if not all(self._ok(m) for m in others):
                raise IOFailure("RAID5 stripe lost two members")
        elif not sources:
            raise IOFailure(f"RAID{raid} column {col}: no copy left to rebuild from")
        su, moved = self.su, 0
        for first, count in _runs(slots):
            n = count * su
            if sources:
                data = self._pread(sources[0], first, 0, n)
            else:
                data = xor_all([self._pread(m, first, 0, n) for m in others], n)
            for t in targets:
                try:
                    self._pwrite(t, first, 0, data)
                except IOFailure as e:
                    self._error(t[0], e, False)
                    raise
                moved += n
        return moved

    # ---- scrub ----------------------------------------------------------------------
    def scrub(self, raid: int, members: Members, slot: int) -> list[str]:
        """Checks stripe ``slot`` and repairs it; returns what was repaired ([] when
        it was whole). A member that cannot be read is written again from
        redundancy (a drive remaps a bad sector on write), after the error was
        reported like any other. Without checksums a disagreement cannot say which
        member is wrong, so, as md's "repair" does, RAID5 parity is recomputed from
        the data columns and a RAID1 column's second copy takes the first's bytes.
        A stripe with a member on a failed drive is the rebuild's business."""
        if not all(self._ok(m) for m in members) or raid not in (1, 5):
            return []
        su, bufs, bad = self.su, [], []
        for i, m in enumerate(members):
            try:
                bufs.append(self._pread(m, slot, 0, su))
            except IOFailure:
                bufs.append(None)
                bad.append(i)
        if any(not self._ok(m) for m in members):
            return []                  # an error just failed a drive
        out = []
        if raid == 5:
            if len(bad) > 1:
                return [f"members {bad} unreadable: stripe lost"]
            if bad:
                i = bad[0]
                bufs[i] = xor_all([b for b in bufs if b is not None], su)
                self._put(members[i], slot, 0, bufs[i])
                out.append(f"member {i} rewritten after a read error")
            elif np.frombuffer(xor_all(bufs, su), dtype=np.uint8).any():
                p = parity_member(slot)
                self._put(members[p], slot, 0,
                          xor_all([b for i, b in enumerate(bufs) if i != p], su))
                out.append("parity recomputed")
            return out
        for c in range(DATA_COLUMNS):
            a, b = 2 * c, 2 * c + 1
            if a in bad and b in bad:
                out.append(f"column {c}: both copies unreadable")
            elif a in bad or b in bad or bufs[a] != bufs[b]:
                src, dst = (b, a) if a in bad else (a, b)
                self._put(members[dst], slot, 0, bufs[src])
                out.append(f"column {c}: copy {dst % 2} " + ("rewritten after a read error"
                                                              if dst in bad else "differed"))
        return out

    # ---- whole-stripe operations ---------------------------------------------------
    def zero(self, raid: int, members: Members, slot: int) -> None:
        """Zeroes the segment on every live member (parity of zeros is zeros)."""
        if self.watched:
            self._note(members, slot)
        for m in members:
            if self._ok(m):
                self.drives[m[0]].zero(m[1] + slot * self.su, self.su)

    def resync(self, raid: int, members: Members, slot: int) -> None:
        """Makes redundancy agree with data again (after a crash mid-write)."""
        su = self.su
        if raid == 5:
            pm = members[parity_member(slot)]
            cols = [members[data_members(5, slot, c)[0]] for c in range(DATA_COLUMNS)]
            if not (self._ok(pm) and all(self._ok(m) for m in cols)):
                return  # degraded: the parity is the only copy of a column's data
            self._pwrite(pm, slot, 0, xor_all((self._pread(m, slot, 0, su) for m in cols), su))
        elif raid == 1:
            for col in range(DATA_COLUMNS):
                a, b = members[2 * col], members[2 * col + 1]
                if self._ok(a) and self._ok(b):
                    self._pwrite(b, slot, 0, self._pread(a, slot, 0, su))

    def consistent(self, raid: int, members: Members, slot: int) -> bool:
        su = self.su
        if raid == 5:
            bufs = [self._pread(m, slot, 0, su) for m in members]
            return not np.frombuffer(xor_all(bufs, su), dtype=np.uint8).any()
        if raid == 1:
            return all(self._pread(members[2 * c], slot, 0, su) == self._pread(members[2 * c + 1], slot, 0, su)
                       for c in range(DATA_COLUMNS))
        return True


def _runs(slots: list[int]) -> list[tuple[int, int]]:
    """(first, count) of each run of consecutive numbers in sorted ``slots``."""
    out: list[tuple[int, int]] = []
    for s in slots:
        if out and out[-1][0] + out[-1][1] == s:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((s, 1))
    return out
