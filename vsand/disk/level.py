"""Leveling (DESIGN.md §5, issue 12 item 4): once drives came or went, PSEGs move
from the fullest working drive of an RSS to the emptiest one its RStore does not
use, until every working drive's used fraction is within ``TOLERANCE`` of the
others of its RSS. A move is a rebuild move (rebuild.py: copy from the member
itself, watch the RStore's writes, switch the RSD member on the loop); LMAPs and
L2MAPs never change, so snapshots and snapclones sharing a segment see nothing.

A move is made only when the target drives' used fractions, with the PSEG, add up
to no more than the source drives' without it (RAID1 moves a pair's two copies):
each move lowers sum(used^2 / size) over the drives, so leveling ends and never
moves a PSEG back and forth. RStores with a member on a failed or leaving
drive are left to the rebuild, which runs first: leveling plans nothing while
there is damage. Use counts a PSEG whose move is not yet committed as freed
already, so that steps between commits do not overshoot.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..mapping.rsd import member_drives
from .rebuild import begin, key, on_drives, start_move, survey

TOLERANCE = 0.05          # "within a few percent": used fractions of one RSS
MAX_TRIES = 256           # columns of one drive looked at per step


class Usage:
    """Used PSEGs per working drive, moves planned in this step included."""

    def __init__(self, pool):
        self.alloc = pool.allocator
        pending = Counter(d for d, _ in self.alloc.pending)
        # as the allocator (and `drive list`) sees it: a metadata reserve is room data
        # cannot take, so a quorum drive holds less data than the others
        self.used = {i: ds.npsegs - max(0, ds.free - ds.reserve) - pending[i]
                     for i, ds in self.alloc.drives.items()}

    def frac(self, i: int) -> float:
        n = self.alloc.drives[i].npsegs
        return self.used[i] / n if n else 1.0

    def rss(self):
        """(LDAD, working drives of one RSS fullest first, spread) for every RSS."""
        for ldad, groups in self.alloc.rss.items():
            for g in groups:
                ws = sorted((i for i in g if not (ds := self.alloc.drives[i]).failed
                             and not ds.leaving and ds.npsegs), key=lambda i: (-self.frac(i), i))
                yield ldad, ws, (self.frac(ws[0]) - self.frac(ws[-1])) if ws else 0.0


def imbalance(pool, usage: Usage | None = None) -> list[tuple[str, list[int], float]]:
    """(LDAD, its working drives fullest first, spread) of every RSS whose spread
    exceeds TOLERANCE, widest first. The fullest drive may have nothing that can
    move (its metadata reserve, RStores that use every emptier drive): the next
    ones are sources too."""
    u = usage or Usage(pool)
    return sorted((x for x in u.rss() if x[2] > TOLERANCE), key=lambda x: -x[2])


def spread(pool) -> float:
    """The widest used-fraction spread of any RSS (status)."""
    return max((x[2] for x in Usage(pool).rss()), default=0.0)


def _columns(pool, src: int, want: int):
    """(table, RSD index, column) of live RStores with a member on ``src``: first
    those with none on ``want`` (the emptiest drive, where a move helps most; an
    RStore may hold one member per drive), then the others."""
    alloc = pool.allocator
    for first in (True, False):
        for t in pool.space.tables.values():
            on = [src] + (alloc.mirrored_by([src]) if t.raid == 1 else [])
            there = [want] + (alloc.mirrored_by([want]) if t.raid == 1 else [])
            for base, rows, live in t.blocks():
                drives = member_drives(rows)
                free = ~np.isin(drives, there).any(axis=1)
                hit = np.isin(drives, on) & (live & (free if first else ~free))[:, None]
                for r, c in zip(*np.nonzero(hit)):
                    yield t, base + int(r), int(c)


def potential(pool) -> float:
    """The sum over working drives of used PSEGs squared over the drive's size:
    every move lowers it (see ``_from``), so leveling ends."""
    u = Usage(pool)
    return sum(u.used[i] ** 2 / u.alloc.drives[i].npsegs for _, ws, _ in u.rss() for i in ws)


def remaining(pool) -> int:
    """About how many moves leveling has left (progress); 0 when every RSS is level
    or no move would lower the spread (a dry run of one move)."""
    if not imbalance(pool) or survey(pool).todo:
        return 0
    found = _choose(pool, 1, set())
    for t, _, _, spare in found:
        _give_back(pool.allocator, t.raid, spare)
    return _estimate(pool) if found else 0


def _estimate(pool) -> int:
    """Moves to close half of each uneven RSS's widest gap, at least one each."""
    return sum(max(1, int(gap * pool.allocator.drives[order[0]].npsegs / 2))
               for _, order, gap in imbalance(pool))


def _targets(alloc, raid: int, drive: int) -> list[int]:
    """The drives a PSEG taken on ``drive`` occupies: a RAID1 one its partner too."""
    return [drive] + ([alloc.partner(drive)] if raid == 1 else [])


def _give_back(alloc, raid: int, spare: tuple[int, int]) -> None:
    for d in _targets(alloc, raid, spare[0]):
        alloc.free_now(d, spare[1])


def plan(pool, budget: int, skip: set):
    """The next leveling step (a rebuild Plan) of up to ``budget`` moves, or None
    when every RSS is level, nothing can move without overshooting, or a rebuild
    has work left."""
    pool.tx.writable()
    if survey(pool).todo:
        return None
    moves = [start_move(pool, t, idx, col, spare) for t, idx, col, spare in _choose(pool, budget, skip)]
    if not moves:
        return None
    # a move was found, so no dry run is needed to know more may follow
    return begin(pool, moves, [], max(0, _estimate(pool) - len(moves)))


def _choose(pool, budget: int, skip: set) -> list:
    """Up to ``budget`` (table, RSD index, column, spare PSEG taken) that lower the
    spread, off the fullest drives of each uneven RSS."""
    u = Usage(pool)
    out: list = []
    for _, order, _ in imbalance(pool, u):
        for src in order[:-1]:
            _from(pool, u, src, order[-1], budget, skip, out)
            if len(out) >= budget:
                break
        if len(out) >= budget:
            break
    return out


def _from(pool, u: Usage, src: int, want: int, budget: int, skip: set, out: list) -> None:
    """Adds to ``out`` moves off drive ``src`` that lower the spread."""
    alloc = pool.allocator
    tries = 0
    for t, idx, col in _columns(pool, src, want):
        if len(out) >= budget or tries >= MAX_TRIES:
            break
        if key((t, idx, col)) in skip:
            continue
        tries += 1
        on = on_drives(pool, t, idx)
        if any(alloc.drives[d].failed or alloc.drives[d].leaving for d in on):
            continue
        spare = alloc.take_spare(t.ldad, t.raid, on)
        if spare is None:
            continue
        srcs = [src] + (alloc.mirrored_by([src]) if t.raid == 1 else [])
        dsts = _targets(alloc, t.raid, spare[0])
        for d in dsts:
            u.used[d] += 1
        # with f = used / size: sum(f + 1/size) over the targets <= sum(f - 1/size)
        # over the sources, so sum(used^2 / size) goes down (``potential``)
        if sum(u.frac(d) for d in dsts) > sum(u.frac(s) - 1 / alloc.drives[s].npsegs for s in srcs):
            for d in dsts:
                u.used[d] -= 1
            _give_back(alloc, t.raid, spare)
            continue        # the emptiest place this RStore may use is not empty enough
        for s in srcs:
            u.used[s] -= 1
        out.append((t, idx, col, spare))
