"""The offline checker finds what it claims to find (each check is made to fail)."""

import os
import subprocess
import sys

import numpy as np

from vsand.disk.check import check_paths
from vsand.disk.pool import Pool
from vsand.mapping.lmap import SP, SS
from vsand.meta import format as fmt
from vsand.units import MiB

from poolkit import make_pool


def populated(tmp_path):
    pool, paths = make_pool(tmp_path)
    for raid in (0, 1, 5):
        ld = pool.create_ld(f"l{raid}", 16 * MiB, raid=raid)
        ld.write(MiB // 2, os.urandom(5 * MiB))
    pool.close()
    return paths


def test_clean_pool_is_clean_and_cli_exit_codes(tmp_path):
    paths = populated(tmp_path)
    assert check_paths(paths, parity=True) == []
    cmd = [sys.executable, "-m", "vsand", "check"] + sum((["--drive", p] for p in paths), [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and "clean: 8 drives" in r.stdout
    with open(paths[3], "r+b") as f:
        f.seek(10)
        f.write(b"\xff")
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1 and "label" in r.stdout


def test_detects_corrupt_checkpoint_copy(tmp_path):
    paths = populated(tmp_path)
    pool = Pool.open(paths, readonly=True)
    d, psegs = pool.ckpt["copies"][1]
    u = pool.units
    pool.close()
    with open(paths[d], "r+b") as f:
        f.seek(u.quorum + psegs[0] * u.pseg + 100)
        f.write(b"garbage")
    probs = check_paths(paths)
    assert any("checkpoint copy on drive" in p for p in probs), probs
    # one good copy is enough to open the pool
    Pool.open(paths).close()


def test_detects_bad_superblock_copy(tmp_path):
    paths = populated(tmp_path)
    with open(paths[0], "r+b") as f:
        for off in fmt.SB_SLOT_OFF:
            f.seek(off)
            f.write(bytes(64))
    probs = check_paths(paths)
    assert probs == ["drive 0: no valid superblock copy"], probs


def test_detects_map_and_free_map_damage(tmp_path):
    paths = populated(tmp_path)
    pool = Pool.open(paths, readonly=True)
    l0, l5 = pool.get("l0"), pool.get("l5")
    # two entries pointing at one slot, an entry with Sp without a predecessor,
    # an Ss bit on an owned entry, and a PSEG marked free while in use
    l0.l2.set(10, l0.l2.get(1))
    l5.l2.set(2, l5.l2.get(2) | SP)
    l5.l2.set(3, l5.l2.get(3) | SS)
    used = np.flatnonzero(pool.allocator.drives[2].used)
    pool.allocator.drives[2].used[used[0]] = False
    from vsand.disk.check import check_pool
    probs = check_pool(pool)
    pool.close()
    text = "\n".join(probs)
    assert "owned by more than one entry" in text
    assert "Sp set without a predecessor" in text
    assert "both shared with the successor and owned" in text
    assert "drive 2: free map disagrees" in text


def test_parity_check_finds_a_bad_stripe(tmp_path):
    paths = populated(tmp_path)
    pool = Pool.open(paths, readonly=True)
    ld = pool.get("l5")
    e = ld.l2.get(1)
    members = pool.space.members(ld.table, (e >> 3) & 0x1FFFFFF)
    pool.close()
    d, off = members[0]
    with open(paths[d], "r+b") as f:
        f.seek(off + (e & 7) * 256 * 1024 + 7)
        f.write(b"\x55")
    assert check_paths(paths) == []
    probs = check_paths(paths, parity=True)
    assert probs == ["LD l5 segment 1: redundancy disagrees with data"], probs
