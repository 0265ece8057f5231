"""Space accounting (disk/usage.py) on chains built by hand: the figures of every LD
after snapshots, writes to the LUN and to snapshots, trims, a seed left by BGCOPY,
and deletes, where ``exclusive`` must be exactly what the delete frees."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "model"))
from poolkit import make_pool
from test_snapshot_model import accounting_problems, pattern
from usage_invariants import delete_measured, usage_problems

from vsand.disk import sharing, usage
from vsand.disk.check import check_pool
from vsand.mapping.lmap import ALLOCATED, SP, SS
from vsand.units import MiB, Units

SEG = MiB


def segs(pool, name: str) -> dict[str, int]:
    """The figures of ``name`` in segments."""
    u = usage.usage_by_name([pool.get(name)])[name]
    return {k: u[k] // SEG for k in ("allocated", "referenced", "exclusive", "shared")}


def fig(a, r, x) -> dict[str, int]:
    return {"allocated": a, "referenced": r, "exclusive": x, "shared": r - x}


def consistent(pool) -> None:
    problems = usage_problems(pool) + check_pool(pool) + accounting_problems(pool)
    assert not problems, "\n".join(problems)


def delete_frees_exclusive(pool, name: str) -> None:
    excl, freed = delete_measured(pool, name)
    assert freed == excl, f"deleting {name} freed {freed} segments, its exclusive said {excl}"
    consistent(pool)


def pool_allocated(pool) -> int:
    return usage.pool_usage(pool)["allocated"] // SEG


def test_lun_alone(tmp_path):
    pool, _ = make_pool(tmp_path)
    lun = pool.create_ld("lun", 8 * MiB, raid=5)
    assert segs(pool, "lun") == fig(0, 0, 0)
    lun.write(0, pattern(1, 3 * SEG))
    lun.write(5 * SEG + 10, b"x")
    assert segs(pool, "lun") == fig(4, 4, 4)
    u = usage.usage_by_name([lun])["lun"]
    assert u["provisioned"] == 8 * MiB and u["allocated"] == 4 * MiB
    consistent(pool)
    delete_frees_exclusive(pool, "lun")
    assert pool_allocated(pool) == 0
    pool.close()


def test_snapshot_writes_trims_and_deletes(tmp_path):
    pool, _ = make_pool(tmp_path)
    lun = pool.create_ld("lun", 8 * MiB, raid=1)
    lun.write(0, pattern(1, 4 * SEG))                # segments 0-3
    pool.snapshot("lun", "s1")
    # s1 reads all four through the LUN; deleting either frees nothing the other reads
    assert segs(pool, "s1") == fig(0, 4, 0)
    assert segs(pool, "lun") == fig(4, 4, 0)
    consistent(pool)
    lun.write(0, pattern(2, SEG))                    # whole: s1 receives the old segment 0
    lun.write(SEG + 5, b"partial")                   # partial: s1 receives a copy of segment 1
    assert segs(pool, "s1") == fig(2, 4, 2)
    assert segs(pool, "lun") == fig(4, 4, 2)
    lun.write(6 * SEG, pattern(3, SEG))              # new data only the LUN has
    assert segs(pool, "lun") == fig(5, 5, 3)
    s1 = pool.get("s1")
    s1.write(7 * SEG, pattern(4, SEG))               # new data only the snapshot has
    s1.write(2 * SEG + 1, b"snap")                   # the snapshot's own copy of segment 2
    assert segs(pool, "s1") == fig(4, 5, 4)
    assert segs(pool, "lun") == fig(5, 5, 4)
    lun.trim(3 * SEG, SEG)                           # s1 keeps the old segment 3
    assert segs(pool, "lun") == fig(4, 4, 4)
    assert segs(pool, "s1") == fig(5, 5, 5)
    consistent(pool)
    pool.snapshot("lun", "s2")                       # chain s1 <-> s2 <-> lun
    assert segs(pool, "s2") == fig(0, 4, 0)
    assert segs(pool, "lun") == fig(4, 4, 0)
    assert segs(pool, "s1") == fig(5, 5, 5)          # s1 reads nothing through s2 or the LUN
    pool.get("s2").write(0, pattern(5, SEG))         # s2 takes its own segment 0
    lun.trim(SEG, 2 * SEG)                           # s2 receives segments 1 and 2
    assert segs(pool, "s2") == fig(3, 4, 3)
    assert segs(pool, "lun") == fig(2, 2, 1)
    consistent(pool)
    # a middle snapshot: what it owns and s1 reads through it passes to s1
    s1.trim(0, 8 * SEG)
    assert segs(pool, "s1") == fig(0, 0, 0)
    pool.snapshot("s2", "s0")                        # chain s1 <-> s0 <-> s2 <-> lun
    assert segs(pool, "s2") == fig(3, 4, 0) and segs(pool, "s0") == fig(0, 4, 0)
    consistent(pool)
    for name in ("s2", "lun", "s1", "s0"):
        delete_frees_exclusive(pool, name)
    assert pool_allocated(pool) == 0
    pool.close()


def test_unwritten_regions_and_many_lmaps(tmp_path):
    """Absent LMAPs (fills) in some LDs of a chain, present in others."""
    pool, _ = make_pool(tmp_path, units=Units(quorum=8 * MiB, lmap_segments=2))
    lun = pool.create_ld("lun", 12 * MiB, raid=0)
    lun.write(9 * SEG, pattern(1, SEG))
    pool.snapshot("lun", "s1")
    pool.snapshot("lun", "s2")
    lun.write(9 * SEG, pattern(2, SEG))
    lun.write(4 * SEG, pattern(3, SEG))
    pool.get("s1").write(0, b"x")
    assert segs(pool, "s1") == fig(1, 2, 1)
    assert segs(pool, "s2") == fig(1, 1, 0)          # s1 reads its segment 9 through s2
    assert segs(pool, "lun") == fig(2, 2, 2)
    consistent(pool)
    for name in ("s2", "s1", "lun"):
        delete_frees_exclusive(pool, name)
    pool.close()


@pytest.mark.parametrize("victim", ["LD", "C0", "S1", "S0"])
def test_seed_left_by_bgcopy(tmp_path, victim):
    """S0 <-> S1 <-> C0 <-> LD; BGCOPY copies segment 0 into C0 and LD.Sp stays over
    it (a seed). LD's segment 0 is then LD's alone (a delete frees it, as unlink
    does), C0's copy is shared with S1, which reads it through C0."""
    pool, _ = make_pool(tmp_path)
    ld = pool.create_ld("LD", 4 * MiB, raid=5)
    ld.write(0, pattern(1, 4 * MiB))
    pool.snapshot("LD", "S0")
    ld.write(3 * SEG, pattern(3, SEG))
    pool.snapshot("LD", "S1")
    ld.write(2 * SEG, pattern(2, SEG))
    c0 = pool.snapclone("LD", "C0")
    pool.bgcopy_step("C0", 1)
    assert c0.l2.get(0) & ALLOCATED and not c0.l2.get(0) & SS and ld.l2.get(0) & SP   # the seed
    assert sharing.seeded(c0, 0)
    assert segs(pool, "LD") == fig(4, 4, 1)      # 0: the seed's other side; 1-3 C0 reads
    assert segs(pool, "C0") == fig(1, 4, 0)      # S1 reads its copy of 0 through it
    assert segs(pool, "S1") == fig(1, 4, 0)      # S0 reads the old segment 2 through S1
    assert segs(pool, "S0") == fig(1, 4, 1)      # the old segment 3 is S0's alone
    consistent(pool)
    delete_frees_exclusive(pool, victim)
    pool.close()


def test_pool_figures(tmp_path):
    pool, _ = make_pool(tmp_path)
    st = pool.status()
    p = usage.pool_usage(pool)
    assert p["capacity"] == sum(d["psegs"] for d in st["drives"]) * pool.units.pseg
    assert p["free"] == st["free_bytes"] and p["used"] == p["capacity"] - p["free"]
    assert (p["allocated"], p["physical"], p["freeing"], p["reserved"]) == (0, 0, 0, 0)
    r5 = pool.create_ld("r5", 16 * MiB, raid=5)
    r5.write(0, pattern(1, 9 * SEG))                       # 2 RStores of 5 PSEGs
    r1 = pool.create_ld("r1", 8 * MiB, raid=1)
    r1.write(0, b"y")                                      # 1 RStore of 8 PSEGs
    p = usage.pool_usage(pool)
    assert p["allocated"] == 10 * SEG
    assert p["physical"] == (2 * 5 + 8) * pool.units.pseg
    assert p["used"] >= p["physical"]
    r5.trim(0, 2 * SEG)                                     # freed when the next commit is durable
    p = usage.pool_usage(pool)
    assert (p["allocated"], p["freeing"]) == (8 * SEG, 2 * SEG)
    pool.flush()
    p = usage.pool_usage(pool)
    assert (p["allocated"], p["freeing"]) == (8 * SEG, 0)
    pool.snapshot("r1", "r1-snap", reserve=True)
    assert usage.pool_usage(pool)["reserved"] == 8 * SEG   # a full copy: it owns nothing yet
    pool.close()


def test_chain_segments_in_bulk_matches_reference_on_random_chains(tmp_path):
    """Random writes, trims and snapshots anywhere in one chain; the bulk figures
    match the segment-by-segment reference after every step."""
    rng = np.random.default_rng(7)
    pool, _ = make_pool(tmp_path, units=Units(quorum=8 * MiB, lmap_segments=4))
    pool.create_ld("lun", 10 * MiB, raid=0)
    names = ["lun"]
    for step in range(60):
        name = names[int(rng.integers(len(names)))]
        ld = pool.get(name)
        what = rng.integers(4)
        k = int(rng.integers(10))
        if what == 0 and len(names) < 5:
            names.append(f"s{step}")
            pool.snapshot(name, names[-1])
        elif what == 1:
            ld.trim(k * SEG, SEG)
        else:
            ld.write(k * SEG + int(rng.integers(2)) * 100, pattern(step, SEG // 2))
        consistent(pool)
    while names:
        delete_frees_exclusive(pool, names.pop(int(rng.integers(len(names)))))
    pool.close()
