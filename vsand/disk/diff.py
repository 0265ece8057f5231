"""Changed-block diffs between two LDs of one sharing chain, from the maps alone.

Two LDs of one chain read segment k from the entries ``sharing.resolve_range``
finds for each (the entries of the LDs that hold their data). Where both resolve
to the same data entry they read the same bytes; where neither is allocated both
read zeros; anywhere else the segment *may* differ and is reported. The result is
a safe superset: a segment rewritten with the bytes it had, or a snapclone's own
copy of a segment its successor still holds (a seed), is reported though equal.
No data is read.

Comparing resolved entries does not depend on which LD is older or where each
sits in the chain (a revert may put a LUN in the middle of its chain): the diff
of A from B equals the diff of B from A over their common size.

Sizes may differ (a LUN grown after a snapshot): past the end of the smaller LD
a segment counts as changed where the larger reads allocated data (the smaller
has no bytes there; an unallocated segment reads zeros, as new space does).
Extents are reported over NEWER's address space, the export a backup reads.

Without an OLDER LD the diff is NEWER's allocated segments: what a full backup
copies (like ``rbd diff`` without ``--from-snap``).
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from ..mapping.lmap import differ
from .sharing import chain_of, resolve_range


def check_pair(newer, older=None) -> None:
    """Refuses what has no diff: an invalid LD (it holds nothing), or two LDs that
    share no data (different chains, or a snapclone that left its tree)."""
    for ld in (newer, older):
        if ld is not None and ld.invalid:
            raise InvalidArgument(f"{ld.name} is invalid (its snapshot space ran out): "
                                  f"it has no data to compare")
    if older is not None and older is not newer and not any(m is older for m in chain_of(newer)):
        raise InvalidArgument(f"{newer.name} and {older.name} are not in one sharing chain: a "
                              f"changed-block diff needs a snapshot of the same LUN "
                              f"(see `vsanctl tree {newer.name}`)")


def peers(ld) -> list:
    """The LDs a diff of ``ld`` can be taken against: the others of its chain."""
    return [] if ld.invalid else [m for m in chain_of(ld) if m is not ld]


def _resolved(ld, lo: int, hi: int) -> np.ndarray:
    """Holders' entries of ``ld`` for segments lo..hi; past its end, unallocated."""
    out = np.zeros(hi - lo, dtype=np.uint32)
    top = min(hi, ld.l2.nsegs)
    if top > lo:
        out[:top - lo] = resolve_range(ld, lo, top)
    return out


def changed_segments(newer, older, lo: int, hi: int) -> np.ndarray:
    """Mask over segments lo..hi: True where ``newer`` may read other bytes than
    ``older`` (``older`` None: where ``newer`` reads allocated data). The caller
    has checked the pair (check_pair)."""
    a = _resolved(newer, lo, hi)
    return differ(a, np.zeros_like(a) if older is None else _resolved(older, lo, hi))


def _runs(mask: np.ndarray):
    """(start, stop, value) of each run of equal values in ``mask``."""
    if not len(mask):
        return
    edges = np.flatnonzero(mask[1:] != mask[:-1]) + 1
    starts = np.concatenate(([0], edges))
    stops = np.concatenate((edges, [len(mask)]))
    yield from zip(starts.tolist(), stops.tolist(), mask[starts].tolist())


def changed_extents(newer, older, off: int, n: int) -> list[tuple[int, bool]]:
    """[(length, changed)] covering exactly [off, off+n) of ``newer``, adjacent
    runs merged (the form of LogicalDisk.extents)."""
    seg = newer.seg
    assert n > 0 and 0 <= off and off + n <= newer.size
    k0, k1 = off // seg, -(-(off + n) // seg)
    out = []
    for s, e, v in _runs(changed_segments(newer, older, k0, k1)):
        a, b = max(off, (k0 + s) * seg), min(off + n, (k0 + e) * seg)
        out.append((b - a, bool(v)))
    return out


def diff_extents(newer, older=None) -> list[tuple[int, int]]:
    """[(offset, length)] of every changed extent of ``newer`` (merged, in order),
    one LMAP range at a time."""
    check_pair(newer, older)
    seg, out = newer.seg, []
    for lo, hi in newer.l2.ranges():
        for s, e, v in _runs(changed_segments(newer, older, lo, hi)):
            if not v:
                continue
            if out and out[-1][0] + out[-1][1] == (lo + s) * seg:
                out[-1] = (out[-1][0], out[-1][1] + (e - s) * seg)
            else:
                out.append(((lo + s) * seg, (e - s) * seg))
    return out


class Changes:
    """``older``'s diff as NEWER's export reports it, bound to both LDs when a
    client selected it: an LD deleted since (even if a new one took its name), or
    that left the chain, is refused at each request, never compared by name."""

    def __init__(self, pool, newer, older):
        check_pair(newer, older)
        self.pool, self.newer, self.older = pool, newer, older

    def extents(self, off: int, n: int) -> list[tuple[int, bool]]:
        o = self.older
        if self.pool.lds.get(o.name) is not o:
            raise InvalidArgument(f"{o.name} was deleted after the client selected its diff")
        check_pair(self.newer, o)
        return changed_extents(self.newer, o, off, n)
