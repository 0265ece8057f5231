"""PSEG allocation: free maps per drive, LDAD / RSS grouping, placement rules.

Placement (DESIGN.md §4): the PSEGs of one RStore sit on distinct drives of one RSS;
both copies of a RAID1 column sit on the two drives of an RSS pair. Among the
drives that qualify we pick those with the highest *free fraction*, so each
drive's use stays proportional to its capacity when drive sizes differ.

Freed PSEGs are parked until the metadata transaction that frees them commits
(``release_pending``): reusing one earlier could let a crash expose new data
under an old, still-committed map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import NoSpace, InvalidArgument

RAID_WIDTH = {0: 4, 5: 5, 1: 8}
RSS_MIN, RSS_MAX = 6, 11


def group_rss(drive_ids: list[int]) -> list[list[int]]:
    """Splits an LDAD's drives into RSSs of 6-11 drives (one RSS for small pools)."""
    ids = sorted(drive_ids)
    if len(ids) <= RSS_MAX:
        return [ids]
    k = math.ceil(len(ids) / RSS_MAX)
    base, extra = divmod(len(ids), k)
    out, i = [], 0
    for g in range(k):
        n = base + (1 if g < extra else 0)
        out.append(ids[i:i + n])
        i += n
    assert all(RSS_MIN <= len(g) <= RSS_MAX for g in out)
    return out


@dataclass
class DriveSpace:
    index: int
    npsegs: int
    ldad: str
    used: np.ndarray = field(repr=False)
    free: int = 0
    reserve: int = 0
    cursor: int = 0
    failed: bool = False
    leaving: bool = False       # being emptied for removal: takes no new PSEGs

    @classmethod
    def new(cls, index: int, npsegs: int, ldad: str) -> "DriveSpace":
        return cls(index, npsegs, ldad, np.zeros(npsegs, dtype=bool), npsegs)

    def take(self) -> int:
        """Lowest free PSEG at or after the cursor (wrapping)."""
        for lo, hi in ((self.cursor, self.npsegs), (0, self.cursor)):
            if lo < hi:
                seg = self.used[lo:hi]
                i = int(np.argmin(seg))
                if not seg[i]:
                    p = lo + i
                    self.used[p] = True
                    self.free -= 1
                    self.cursor = p + 1 if p + 1 < self.npsegs else 0
                    return p
        raise NoSpace(f"drive {self.index} has no free PSEG")


class Allocator:
    def __init__(self, drives: list[DriveSpace], rss: dict[str, list[list[int]]]):
        self.drives = {d.index: d for d in drives}
        self.rss = rss  # ldad -> list of RSS (lists of drive indices)
        self.pending: list[tuple[int, int]] = []
        self._pair()

    def _pair(self) -> None:
        """RSS pairs: positions 0-1, 2-3, ... of each RSS (an odd one out has none)."""
        self._partner = {g[j]: g[j ^ 1] for gs in self.rss.values() for g in gs
                         for j in range(len(g) - len(g) % 2)}

    def add_drive(self, d: DriveSpace) -> None:
        """A new drive joins the smallest RSS of its LDAD that has fewer than RSS_MAX
        drives (at the end, so every pair stays as it was; it pairs with a drive
        that had no partner, which therefore held no RAID1 copy), or starts an RSS
        of its own when all are full."""
        self.drives[d.index] = d
        groups = self.rss.setdefault(d.ldad, [])
        room = [g for g in groups if len(g) < RSS_MAX]
        if room:
            min(room, key=len).append(d.index)
        else:
            groups.append([d.index])
        self._pair()

    # ---- queries -------------------------------------------------------------------
    def ldads(self) -> list[str]:
        return list(self.rss)

    def usable(self, d: DriveSpace) -> int:
        """Free PSEGs data may take: never negative, though a metadata reserve that
        grew after the drive filled may exceed what is free."""
        return 0 if d.failed or d.leaving else max(0, d.free - d.reserve)

    def free_psegs(self, ldad: str | None = None) -> int:
        return sum(self.usable(d) for d in self.drives.values()
                   if ldad is None or d.ldad == ldad)

    def _frac(self, d: DriveSpace) -> float:
        return self.usable(d) / d.npsegs if d.npsegs else 0.0

    # ---- RStore placement --------------------------------------------------------
    def pick_rstore(self, ldad: str, raid: int, skip: frozenset | set = frozenset()) -> list[int]:
        """Drive indices, in column order, for a new RStore; NoSpace when none fits."""
        if ldad not in self.rss:
            raise InvalidArgument(f"no LDAD named {ldad!r}")
        width = RAID_WIDTH[raid]
        best: tuple[float, list[int]] | None = None
        for group in self.rss[ldad]:
            ds = [self.drives[i] for i in group]
            if raid == 1:
                pairs = [(ds[j], ds[j + 1]) for j in range(0, len(ds) - 1, 2)]
                pairs = [p for p in pairs if self.usable(p[0]) > 0 and self.usable(p[1]) > 0
                         and p[0].index not in skip]
                if len(pairs) < 4:
                    continue
                pairs.sort(key=lambda p: (-min(self._frac(p[0]), self._frac(p[1])), p[0].index))
                chosen = [x.index for p in pairs[:4] for x in p]
                score = min(min(self._frac(a), self._frac(b)) for a, b in pairs[:4])
            else:
                ok = [d for d in ds if self.usable(d) > 0]
                if len(ok) < width:
                    continue
                ok.sort(key=lambda d: (-self._frac(d), -self.usable(d), d.index))
                chosen = sorted(d.index for d in ok[:width])
                score = min(self._frac(d) for d in ok[:width])
            if best is None or score > best[0]:
                best = (score, chosen)
        if best is None:
            have = sum(len(g) for g in self.rss[ldad])
            if have < width:
                raise NoSpace(f"RAID{raid} needs {width} drives in one RSS; LDAD {ldad!r} has {have}")
            raise NoSpace(f"pool LDAD {ldad!r} is full for RAID{raid}")
        return best[1]

    def alloc_rstore(self, ldad: str, raid: int) -> list[tuple[int, int]]:
        """(drive, PSEG) per member. RAID1 copies take the same PSEG number on both
        drives of a pair, which lets the RSD store one number per column."""
        if raid != 1:
            return [(i, self.drives[i].take()) for i in self.pick_rstore(ldad, raid)]
        skip: set[int] = set()
        while True:
            chosen = self.pick_rstore(ldad, 1, skip)
            out: list[tuple[int, int]] = []
            for a, b in zip(chosen[::2], chosen[1::2]):
                p = self._take_common(self.drives[a], self.drives[b])
                if p is None:
                    skip.add(a)
                    for d, q in out:
                        self.free_now(d, q)
                    break
                out += [(a, p), (b, p)]
            else:
                return out

    def unplaceable(self, ldad: str, raid: int) -> str | None:
        """Why no RStore of ``raid`` could ever be placed in LDAD ``ldad`` as its drives
        stand (too few working drives or RAID1 pairs in any one RSS), or None. Free
        space is not looked at: a thin LD takes it later."""
        if ldad not in self.rss:
            raise InvalidArgument(f"no LDAD named {ldad!r}")
        ok = [[i for i in g if not self.drives[i].failed and not self.drives[i].leaving]
              for g in self.rss[ldad]]
        width = RAID_WIDTH[raid]
        if raid == 1:
            pairs = max(sum(1 for a in g if a in self._partner and a < self._partner[a]
                            and self._partner[a] in g) for g in ok)
            if pairs < width // 2:
                return (f"RAID1 needs {width // 2} pairs of working drives in one RSS; LDAD "
                        f"{ldad!r} has {pairs}")
        elif max(map(len, ok)) < width:
            return (f"RAID{raid} needs {width} working drives in one RSS; LDAD {ldad!r} has "
                    f"{max(map(len, ok))}")
        return None

    def can_place(self, ldad: str, raid: int, drives: set[int]) -> bool:
        """Whether ``take_spare`` could place a member now (nothing is taken)."""
        group = next((g for g in self.rss.get(ldad, ()) if drives & set(g)), None)
        if group is None:
            return False
        if raid == 1:
            return any(a < b and a not in drives and b not in drives
                       and self.usable(self.drives[a]) > 0 and self.usable(self.drives[b]) > 0
                       for a in group if (b := self._partner.get(a)) is not None)
        return any(i not in drives and self.usable(self.drives[i]) > 0 for i in group)

    def take_spare(self, ldad: str, raid: int, drives: set[int]) -> tuple[int, int] | None:
        """(drive, PSEG) for a member that replaces one of an RStore whose members sit
        on ``drives`` (the failed or leaving one included), on another drive of the
        same RSS, or None when no drive there has room. RAID1 takes the same PSEG
        on the drive returned and its partner."""
        group = next((g for g in self.rss.get(ldad, ()) if drives & set(g)), None)
        if group is None:
            return None
        if raid == 1:
            pairs = [(self.drives[a], self.drives[self.partner(a)]) for a in group
                     if a in self._partner and a < self._partner[a]
                     and a not in drives and self._partner[a] not in drives]
            pairs = [p for p in pairs if self.usable(p[0]) > 0 and self.usable(p[1]) > 0]
            pairs.sort(key=lambda p: (-min(self._frac(p[0]), self._frac(p[1])), p[0].index))
            for a, b in pairs:
                g = self._take_common(a, b)
                if g is not None:
                    return a.index, g
            return None
        ok = [self.drives[i] for i in group if i not in drives and self.usable(self.drives[i]) > 0]
        if not ok:
            return None
        d = max(ok, key=lambda d: (self._frac(d), self.usable(d), -d.index))
        return d.index, d.take()

    def _take_common(self, a: DriveSpace, b: DriveSpace) -> int | None:
        n = min(a.npsegs, b.npsegs)
        both = a.used[:n] | b.used[:n]
        i = int(np.argmin(both)) if n else 0
        if not n or both[i]:
            return None
        for d in (a, b):
            d.used[i] = True
            d.free -= 1
        return i

    def partner(self, drive: int) -> int:
        """The other drive of ``drive``'s RSS pair (RAID1 mirror placement)."""
        try:
            return self._partner[drive]
        except KeyError:
            raise InvalidArgument(f"drive {drive} has no RSS pair") from None

    def mirrored_by(self, drives) -> list[int]:
        """The drives whose RSS pair partner is one of ``drives``."""
        ds = set(drives)
        return sorted(a for a, b in self._partner.items() if b in ds)

    def alloc_meta(self, drive: int, n: int) -> list[int]:
        """PSEGs for checkpoint blobs; may use the drive's metadata reserve."""
        d = self.drives[drive]
        if d.free < n:
            raise NoSpace(f"drive {drive}: no room for metadata ({n} PSEGs)")
        return [d.take() for _ in range(n)]

    # ---- bookkeeping -------------------------------------------------------------
    def mark_used(self, drive: int, psegs) -> None:
        d = self.drives[drive]
        psegs = np.asarray(psegs, dtype=np.int64)
        if len(psegs) == 0:
            return
        if psegs.max() >= d.npsegs or psegs.min() < 0:
            raise InvalidArgument(f"drive {drive}: PSEG out of range")
        newly = ~d.used[psegs]
        d.used[psegs] = True
        d.free -= len(np.unique(psegs[newly]))  # count PSEGs, not nonzero PSEG numbers (PSEG 0)

    def free_later(self, drive: int, pseg: int) -> None:
        self.pending.append((drive, pseg))

    def free_now(self, drive: int, pseg: int) -> None:
        d = self.drives[drive]
        assert d.used[pseg], (drive, pseg)
        d.used[pseg] = False
        d.free += 1

    def release_pending(self, upto: int | None = None) -> None:
        """Returns parked PSEGs to the free maps once their transaction is durable."""
        n = len(self.pending) if upto is None else upto
        for drive, pseg in self.pending[:n]:
            self.free_now(drive, pseg)
        del self.pending[:n]

    def set_reserve(self, drive: int, n: int) -> None:
        self.drives[drive].reserve = n
