#!/usr/bin/env python3
"""Time of the space accounting behind `vsanctl du` / `lun list` (vsand/disk/usage.py)
on a fully mapped LUN of SIZE (default 2 TiB, the most an L2MAP holds) and chains of
snapshots over it: each LD's every LMAP present, older LDs reading ~90% through their
successor, Sp set on half the entries. The maps are built directly in memory (a thick
2 TiB create on sparse drives takes minutes and proves nothing more here), so this
is the numpy work `du` does on the daemon's event loop, nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vsand.disk.usage import chain_segments  # noqa: E402
from vsand.mapping.lmap import ALLOCATED, SP, SS, L2map  # noqa: E402
from vsand.units import MiB, Units, parse_size  # noqa: E402


class FakeLD:
    """What chain_segments reads of an LD: its L2MAP."""

    def __init__(self, l2: L2map):
        self.l2 = l2


def chain_of(depth: int, nsegs: int, per: int, rng) -> list[FakeLD]:
    out = []
    for i in range(depth):
        l2 = L2map(nsegs, per)
        for li in range(-(-nsegs // per)):
            e = np.full(per, ALLOCATED, np.uint32)
            if i < depth - 1:
                e[rng.random(per) < 0.9] = SS
            if i:
                e[rng.random(per) < 0.5] |= np.uint32(SP)
            l2.install(li, e)
        out.append(FakeLD(l2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2T", help="LUN size (default 2T)")
    ap.add_argument("--depths", default="1,2,4,8", help="chain lengths to time")
    a = ap.parse_args()
    u = Units()
    nsegs = parse_size(a.size) // u.segment
    rng = np.random.default_rng(1)
    for depth in map(int, a.depths.split(",")):
        chain = chain_of(depth, nsegs, u.lmap_segments, rng)
        t = time.perf_counter()
        chain_segments(chain)
        dt = time.perf_counter() - t
        print(f"{a.size} fully mapped ({nsegs * u.segment // MiB} MiB), chain of {depth}: "
              f"{dt * 1000:.0f} ms ({dt * 1000 / depth:.1f} ms per LD)")


if __name__ == "__main__":
    main()
