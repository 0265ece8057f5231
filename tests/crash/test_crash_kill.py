"""kill -9 at named crash points, then recover and check the durability contract (DESIGN.md §9).

A child process opens a pool of 8 drives holding one 16 MiB LUN of each RAID type,
runs a deterministic workload (writes, trims, flushes, checkpoints) and SIGKILLs
itself the n-th time it passes a crash point (``VSAND_CRASHPOINT``). This process
then reopens the pool and checks:

- every block written before the last flush/checkpoint that returned reads back exactly;
- every block written after it reads as its durable value or as one of the values the
  later operations gave it (never anything else: no torn mixture, no foreign data);
- RAID1 copies and RAID5 parity agree with the data for every allocated segment;
- a second crash-and-reopen (no clean close) gives the same bytes;
- the offline checker (``vsand check --parity``) finds nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import crash_workload as wl
from vsand.disk.check import check_paths
from vsand.disk.pool import Pool

NOPS = 150
SETUP_OPS = 40
WORKLOAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash_workload.py")

# (crash point, n): the n-th pass kills the child. Every point is passed well over n
# times by ops(seed, NOPS); the test asserts that the child really died by SIGKILL.
CASES = [
    ("raid5.between_data_parity", 1),
    ("raid5.between_data_parity", 6),
    ("raid5.between_data_parity", 25),
    ("commit.after_data_sync", 1),
    ("commit.after_data_sync", 4),
    ("commit.after_data_sync", 9),
    ("checkpoint.before_superblock", 1),
    ("checkpoint.before_superblock", 3),
    ("checkpoint.after_superblock", 1),
    ("checkpoint.after_superblock", 4),
    ("log.after_first_copy", 1),
    ("log.after_first_copy", 7),
    ("log.after_first_copy", 30),
    ("superblock.after_first_copy", 1),
    ("superblock.after_first_copy", 3),
    ("raid1.between_copies", 1),
    ("raid1.between_copies", 20),
    ("rstore.between_columns", 2),
    ("rstore.between_columns", 15),
]
# Also with O_DIRECT image files: partial blocks of log commits and superblocks are
# then read-modify-written by the drive (physical/direct.py) instead of the page cache.
DIRECT_CASES = [("raid5.between_data_parity", 6), ("log.after_first_copy", 7),
                ("superblock.after_first_copy", 3)]
RUNS = [(p, n, "buffered") for p, n in CASES] + [(p, n, "direct") for p, n in DIRECT_CASES]


def setup_pool(tmp_path, seed: int, io: str = "auto"):
    """Creates the pool in this process, writes a baseline and closes it cleanly."""
    state = str(tmp_path / "state")
    pool, paths = wl.create_pool(state, io)
    model = wl.new_model()
    base_seed = seed + 10_000
    for i, op in enumerate(wl.ops(base_seed, SETUP_OPS, flush_every=0, ckpt_every=0)):
        wl.run_op(pool, base_seed, i, op)
        wl.apply(model, base_seed, i, op)
    pool.close()
    return state, paths, model


def run_child(args: list[str], crash: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("VSAND_CRASHPOINT", None)
    if crash:
        env["VSAND_CRASHPOINT"] = crash
    return subprocess.run([sys.executable, WORKLOAD] + args, env=env, capture_output=True,
                          text=True, timeout=120)


def read_all(pool: Pool) -> dict[str, np.ndarray]:
    return {name: np.frombuffer(pool.get(name).read(0, wl.LD_SIZE), dtype=np.uint8)
            for name, _ in wl.LDS}


def verify(paths, seed, op_list, base_model, sidefile, io: str = "auto") -> None:
    done, started = wl.read_progress(sidefile)
    nd = wl.durable_prefix(op_list, done)
    durable = {k: v.copy() for k, v in base_model.items()}
    for i in range(nd):
        wl.apply(durable, seed, i, op_list[i])
    later: dict[str, list] = {name: [] for name, _ in wl.LDS}
    for i in range(nd, min(started + 1, len(op_list))):
        op = op_list[i]
        if op[0] in ("write", "trim"):
            later[op[1]].append((op[2], op[3], wl.op_data(seed, i, op)))

    pool = Pool.open(paths, io=io)
    assert all(d.direct == (io == "direct") for d in pool.drives.values())
    problems = []
    got = read_all(pool)
    for name, _ in wl.LDS:
        problems += [f"{name}: {p}" for p in wl.check_blocks(got[name], durable[name], later[name])]
    problems += wl.consistency_problems(pool)
    ctx = f"durable ops {nd}, last done {done}, last started {started}"
    assert not problems, ctx + "\n" + "\n".join(problems)

    # Crash again right after recovery (no clean close): the same bytes come back.
    for d in pool.drives.values():
        d.close()
    pool = Pool.open(paths, io=io)
    again = read_all(pool)
    for name, _ in wl.LDS:
        assert np.array_equal(again[name], got[name]), f"{name} changed across a second reopen ({ctx})"
    assert not wl.consistency_problems(pool)
    pool.close()
    assert check_paths(paths, parity=True) == []


@pytest.mark.parametrize("point,n,io", RUNS,
                         ids=[f"{p}:{n}" + ("-direct" if io == "direct" else "") for p, n, io in RUNS])
def test_kill_at_crash_point(tmp_path, point, n, io):
    seed = 1 + CASES.index((point, n))
    state, paths, base = setup_pool(tmp_path, seed, io)
    side = str(tmp_path / "progress")
    r = run_child(["run", state, str(seed), str(NOPS), side, io], f"{point}:{n}")
    assert r.returncode == -signal.SIGKILL, f"crash point {point}:{n} not reached (rc {r.returncode})\n{r.stderr}"
    verify(paths, seed, wl.ops(seed, NOPS), base, side, io)


RECOVERY_CASES = [
    ("raid5.between_data_parity:9", "checkpoint.before_superblock:1"),
    ("raid1.between_copies:5", "checkpoint.after_superblock:1"),
    ("log.after_first_copy:12", "checkpoint.before_superblock:1"),
]


@pytest.mark.parametrize("first,second", RECOVERY_CASES, ids=[f"{a}+{b}" for a, b in RECOVERY_CASES])
def test_kill_during_recovery(tmp_path, first, second):
    """A crash in the workload, then a second crash while recovery checkpoints."""
    seed = 100 + RECOVERY_CASES.index((first, second))
    state, paths, base = setup_pool(tmp_path, seed)
    side = str(tmp_path / "progress")
    r = run_child(["run", state, str(seed), str(NOPS), side], first)
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = run_child(["open", state], second)
    # Recovery checkpoints only when it replayed something; either way it must not fail.
    assert r.returncode in (0, -signal.SIGKILL), r.stderr
    verify(paths, seed, wl.ops(seed, NOPS), base, side)


def test_clean_run_without_crash_point(tmp_path):
    """The workload itself is sound: without a crash everything it wrote is durable."""
    seed = 7
    state, paths, base = setup_pool(tmp_path, seed)
    side = str(tmp_path / "progress")
    r = run_child(["run", state, str(seed), str(60), side], None)
    assert r.returncode == 0, r.stderr
    op_list = wl.ops(seed, 60)
    done, started = wl.read_progress(side)
    assert done == started == len(op_list) - 1
    model = {k: v.copy() for k, v in base.items()}
    for i, op in enumerate(op_list):
        wl.apply(model, seed, i, op)
    pool = Pool.open(paths)
    got = read_all(pool)
    pool.close()
    for name, _ in wl.LDS:
        assert np.array_equal(got[name], model[name]), name


def test_superblock_on_one_quorum_drive_is_repaired(tmp_path):
    """A kill after the first quorum drive got a new superblock leaves the newest
    generation on that drive only. Recovery uses it; once writes after recovery are
    flushed, losing that one drive must not roll the pool back to the older
    superblock (whose checkpoint space may already be reused) on the other quorum
    drives: the flushed data of the redundant LUNs must still be there."""
    seed = 200
    state, paths, base = setup_pool(tmp_path, seed)
    side = str(tmp_path / "progress")
    r = run_child(["run", state, str(seed), str(NOPS), side], "superblock.after_first_copy:2")
    assert r.returncode == -signal.SIGKILL, r.stderr
    pool = Pool.open(paths)
    want = {}
    for name in ("r1", "r5"):
        want[name] = os.urandom(3 * wl.MiB)
        pool.get(name).write(wl.MiB, want[name])
    pool.flush()
    for d in pool.drives.values():      # crash without a clean close
        d.close()
    first = pool.quorum_ids[0]
    pool = Pool.open([p for i, p in enumerate(paths) if i != first])
    assert pool.drives[first].failed
    for name in ("r1", "r5"):
        assert pool.get(name).read(wl.MiB, 3 * wl.MiB) == want[name], name
    pool.close()
