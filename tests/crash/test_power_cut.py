"""Power-cut simulation: random workloads on drives with a volatile write cache
(power_cut_drive.PowerCutDrive), the power cut at a random I/O, then recovery with
plain drives and a check of the durability contract (DESIGN.md §9):

- every LD that existed at the last durable point (flush, checkpoint, create, delete
  or resize returned) exists with its RAID type and size; LDs deleted before it do not
  (only the operation that was running at the cut may have gone either way);
- every block not written since the last durable point reads exactly as then; every
  block written since reads as one of the states the workload gave it since then;
- RAID1 copies and RAID5 parity agree with data on every allocated segment; the
  offline checker finds nothing;
- after recovery, RAID1/RAID5 LDs read the same with any one drive missing (data,
  redundancy and metadata are all redundant again);
- power cuts *during recovery* (at random I/Os of Pool.open) change none of this, and
  a recovery that completed is itself durable (the next open reads the same bytes).

Two cache models: "all" loses every unflushed write, "subset" keeps a random
version (or none) of each unflushed 4 KiB block, as a disk reordering its cache would.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from power_cut_drive import PowerCut, PowerWorld
from vsand.disk.check import check_paths
import vsand.disk.transactions as pool_module
from vsand.disk.pool import Pool
from vsand.units import KiB, MiB, Units

BLOCK = 4 * KiB
UNITS = Units(quorum=8 * MiB)
NAMES = ("a", "b", "c", "d", "e")
NOPS = 200


class Tracker:
    """What the pool must contain: the state at the last durable point plus the
    operations started since (a block may show any state they gave it)."""

    def __init__(self):
        self.durable: dict[str, tuple[int, int, np.ndarray]] = {}
        self.current: dict[str, tuple[int, int, np.ndarray]] = {}
        # block states since the durable point: name -> list of (first block, array of blocks)
        self.since: dict[str, list[tuple[int, np.ndarray]]] = {}
        self.running: tuple | None = None

    def start(self, op: tuple) -> None:
        self.running = op
        kind = op[0]
        if kind in ("write", "trim"):
            name, off = op[1], op[2]
            data = op[3] if kind == "write" else bytes(op[3])
            arr = self.current[name][2]
            arr[off:off + len(data)] = np.frombuffer(data, dtype=np.uint8)
            b0, b1 = off // BLOCK, -(-(off + len(data)) // BLOCK)
            self.since.setdefault(name, []).append((b0, arr[b0 * BLOCK:b1 * BLOCK].copy()))

    def done(self, op: tuple) -> None:
        self.running = None
        kind = op[0]
        if kind == "create":
            self.current[op[1]] = (op[2], op[3], np.zeros(op[3], dtype=np.uint8))
        elif kind == "delete":
            del self.current[op[1]]
        elif kind == "resize":
            self.current[op[1]] = resized(self.current[op[1]], op[2])
        if kind in ("flush", "ckpt", "create", "delete", "resize"):
            self.durable = {k: (r, s, a.copy()) for k, (r, s, a) in self.current.items()}
            self.since = {}

    def check(self, pool: Pool) -> tuple[list[str], dict[str, bytes]]:
        problems, got_all = [], {}
        run = self.running or ("none",)
        names = set(pool.lds)
        for name in set(self.durable) | names:
            if name not in names:
                if not (run[0] == "delete" and run[1] == name):
                    problems.append(f"LD {name} existed at the last flush and is gone")
                continue
            ld = pool.get(name)
            if name not in self.durable:
                if not (run[0] == "create" and run[1] == name):
                    problems.append(f"LD {name} exists but was never durably created")
                elif (ld.raid, ld.size) != (run[2], run[3]):
                    problems.append(f"LD {name}: half-created with the wrong shape")
                else:
                    got_all[name] = ld.read(0, ld.size)
                    if got_all[name] != bytes(ld.size):
                        problems.append(f"LD {name}: half-created LD does not read as zeros")
                continue
            raid, size, want = self.durable[name]
            if run[0] == "resize" and run[1] == name and ld.size == run[2]:
                raid, size, want = resized(self.durable[name], run[2])
            if (ld.raid, ld.size) != (raid, size):
                problems.append(f"LD {name}: RAID{ld.raid}/{ld.size} bytes, expected RAID{raid}/{size}")
                continue
            got = np.frombuffer(ld.read(0, size), dtype=np.uint8)
            got_all[name] = got.tobytes()
            g = got.reshape(-1, BLOCK)
            ok = np.all(g == want.reshape(-1, BLOCK), axis=1)
            touched = np.zeros(len(ok), dtype=bool)
            for b0, blocks in self.since.get(name, []):
                nb = min(len(blocks) // BLOCK, len(ok) - b0)   # a running shrink cut the LD
                if nb <= 0:
                    continue
                blocks = blocks[:nb * BLOCK]
                touched[b0:b0 + nb] = True
                ok[b0:b0 + nb] |= np.all(g[b0:b0 + nb] == blocks.reshape(-1, BLOCK), axis=1)
            bad = np.flatnonzero(~ok)
            for b in bad[:5].tolist():
                problems.append(f"LD {name} block {b}: {'touched' if touched[b] else 'untouched'} since the "
                                f"last flush, reads {'zeros' if not g[b].any() else 'data'} matching no allowed state")
        for ld in pool.lds_by_id.values():
            ks, es = ld.l2.allocated()
            for k, e in zip(ks.tolist(), es.tolist()):
                members = pool.space.members(ld.table, (e >> 3) & 0x1FFFFFF)
                if not pool.rio.consistent(ld.raid, members, e & 7):
                    problems.append(f"LD {ld.name} segment {k}: RAID{ld.raid} redundancy disagrees with data")
        return problems, got_all


def resized(entry: tuple[int, int, np.ndarray], size: int) -> tuple[int, int, np.ndarray]:
    """A shrunk LD loses its tail; growing adds zeros (never the old tail's bytes)."""
    raid, old, arr = entry
    out = np.zeros(size, dtype=np.uint8)
    out[:min(size, old)] = arr[:min(size, old)]
    return raid, size, out


def next_op(rng: random.Random, t: Tracker) -> tuple:
    live = sorted(t.current)
    r = rng.random()
    if not live or (r < 0.06 and len(live) < 4):
        name = rng.choice([n for n in NAMES if n not in t.current])
        return ("create", name, rng.choice((0, 1, 5)), rng.choice((8, 16)) * MiB, rng.random() < 0.2)
    if r < 0.10 and len(live) > 1:
        return ("delete", rng.choice(live))
    if r < 0.13:
        name = rng.choice(live)
        return ("resize", name, rng.choice([s for s in (4, 8, 12, 16, 24) if s * MiB != t.current[name][1]]) * MiB)
    if r < 0.18:
        return ("flush",)
    if r < 0.22:
        return ("ckpt",)
    name = rng.choice(live)
    size = t.current[name][1]
    x = rng.random()
    if x < 0.2:      # sector-aligned: 4 KiB blocks are only partly rewritten
        unit, n = 512, 512 * rng.randint(1, 40)
    elif x < 0.6:
        unit, n = BLOCK, BLOCK * rng.randint(1, 24)
    elif x < 0.88:
        unit, n = BLOCK, BLOCK * rng.randint(25, 700)
    else:            # whole segments: unmapped by trim, no zeroing on write
        unit, n = BLOCK, MiB * rng.randint(1, 2)
    n = min(n, size)
    if n % MiB == 0 and rng.random() < 0.7:
        off = MiB * rng.randrange((size - n) // MiB + 1)
    else:
        off = unit * rng.randrange((size - n) // unit + 1)
    if rng.random() < 0.18:
        if rng.random() < 0.5:   # whole segments: unmapped, their slots freed at the next commit
            k = rng.randint(1, 2)
            off, n = MiB * rng.randrange(size // MiB - k + 1), k * MiB
        return ("trim", name, off, n)
    return ("write", name, off, rng.randbytes(n))


def run_op(pool: Pool, op: tuple) -> None:
    kind = op[0]
    if kind == "create":
        pool.create_ld(op[1], op[3], raid=op[2], thick=op[4])
    elif kind == "delete":
        pool.delete_ld(op[1])
    elif kind == "resize":
        pool.resize_ld(op[1], op[2])
    elif kind == "flush":
        pool.flush()
    elif kind == "ckpt":
        pool.checkpoint()
    elif kind == "write":
        pool.get(op[1]).write(op[2], op[3])
    elif kind == "trim":
        pool.get(op[1]).trim(op[2], op[3])


def new_pool(tmp_path, world: PowerWorld) -> list[str]:
    specs = [(os.path.join(str(tmp_path), "drives", f"d{i:02d}.img"), 128 * MiB, "default") for i in range(8)]
    pool = Pool.create(specs, UNITS, drive_factory=world.open)
    pool.close()
    return [p for p, _, _ in specs]


def workload_and_cut(paths, rng: random.Random, t: Tracker, mode: str, nops: int,
                     last_io: int = 800, log_size: int | None = None,
                     big_commit: int | None = None) -> tuple[int, int]:
    """Runs random operations on the pool until the power fails at a random I/O up to
    ``last_io`` (or after ``nops`` operations). Returns (I/Os done, blocks kept from
    the caches). ``log_size`` shrinks the metadata log in memory and turns off the
    early checkpoint, so that the log-full paths (a commit or a write intent finds no
    room and checkpoints instead) run often; ``big_commit`` lowers the size above
    which a commit is written as a checkpoint, so that path runs often too."""
    world = PowerWorld(cut_at=rng.randint(1, last_io))
    saved = pool_module.CHECKPOINT_AT, pool_module.BIG_COMMIT
    try:
        pool = Pool.open(paths, drive_factory=world.open)
        if log_size:
            pool.meta.log_size = log_size
            pool_module.CHECKPOINT_AT = 1.0
        if big_commit:
            pool_module.BIG_COMMIT = big_commit
        for _ in range(nops):
            op = next_op(rng, t)
            t.start(op)
            run_op(pool, op)
            t.done(op)
    except PowerCut:
        pass
    finally:
        pool_module.CHECKPOINT_AT, pool_module.BIG_COMMIT = saved
    return world.ios, world.cut(mode, rng)


def assert_contract(paths, t: Tracker, expect: dict[str, bytes] | None = None) -> dict[str, bytes]:
    pool = Pool.open(paths)
    try:
        problems, got = t.check(pool)
        assert not problems, "\n".join(problems)
        if expect is not None:
            assert got.keys() == expect.keys() and all(got[k] == expect[k] for k in got), \
                "a completed recovery was not durable: the next open reads other bytes"
    finally:
        for d in pool.drives.values():   # no clean close: the next open recovers again
            d.close()
    return got


def assert_survives_drive_loss(paths, drive: int, expect: dict[str, bytes]) -> None:
    """After recovery, every RAID1/RAID5 LD reads the same with any one drive gone:
    recovery left data, redundancy and metadata (superblock, checkpoint, log) on
    enough drives. Opened read-only, so the pool itself is not changed."""
    pool = Pool.open([p for i, p in enumerate(paths) if i != drive], readonly=True)
    try:
        assert pool.drives[drive].failed
        for name, ld in pool.lds.items():
            if ld.raid != 0:
                assert name in expect and ld.read(0, ld.size) == expect[name], \
                    f"LD {name} (RAID{ld.raid}) reads differently without drive {drive}"
    finally:
        pool.close()


def recover_with_cuts(paths, rng: random.Random, t: Tracker, mode: str, cuts: int) -> dict[str, bytes] | None:
    """Opens the pool with power cuts at random I/Os of recovery. Returns the bytes a
    completed recovery read (which later opens must reproduce), or None."""
    got = None
    for _ in range(cuts):
        world = PowerWorld(cut_at=rng.randint(1, 40))
        try:
            pool = Pool.open(paths, drive_factory=world.open)
        except PowerCut:
            world.cut(mode, rng)
            continue
        problems, got = t.check(pool)
        assert not problems, "after a recovery on power-cut drives:\n" + "\n".join(problems)
        world.cut(mode, rng)
    return got


@pytest.mark.parametrize("log", ["log7M", "log768", "commit64"])
@pytest.mark.parametrize("mode", ["all", "subset"])
@pytest.mark.parametrize("seed", range(6))
def test_power_cut(tmp_path, seed, mode, log):
    rng = random.Random(f"{mode}-{seed}-{log}")
    t = Tracker()
    paths = new_pool(tmp_path, PowerWorld())
    workload_and_cut(paths, rng, t, mode, NOPS, log_size=768 if log == "log768" else None,
                     big_commit=64 if log == "commit64" else None)
    got = recover_with_cuts(paths, rng, t, mode, cuts=2)
    assert_contract(paths, t, expect=got)
    got = assert_contract(paths, t)
    assert check_paths(paths, parity=True) == []
    assert_survives_drive_loss(paths, rng.choice((0, 1, 2, rng.randrange(3, 8))), got)


@pytest.mark.parametrize("mode", ["all", "subset"])
def test_trimmed_segments_are_not_reused_before_commit(tmp_path, mode):
    """Whole-segment trims free slots; new writes before the next flush must not land
    in them, or a power cut would show the new data under the old (committed) map."""
    paths = new_pool(tmp_path, PowerWorld())
    rng = random.Random(mode)
    t = Tracker()
    world = PowerWorld()
    pool = Pool.open(paths, drive_factory=world.open)
    ops = [("create", f"l{r}", r, 16 * MiB, False) for r in (0, 1, 5)]
    ops += [("write", f"l{r}", 0, rng.randbytes(6 * MiB)) for r in (0, 1, 5)]
    ops += [("flush",)]
    ops += [("trim", f"l{r}", 0, 3 * MiB) for r in (0, 1, 5)]
    ops += [("write", f"l{r}", 8 * MiB + 4096, rng.randbytes(5 * MiB)) for r in (0, 1, 5)]
    ops += [("write", f"l{r}", 14 * MiB, rng.randbytes(MiB)) for r in (0, 1, 5)]
    for op in ops:
        t.start(op)
        run_op(pool, op)
        t.done(op)
    world.cut(mode, rng)
    assert_contract(paths, t)


@pytest.mark.parametrize("mode", ["all", "subset"])
def test_repeated_power_cuts(tmp_path, mode):
    """Several work-and-cut rounds on one pool: each recovery is the starting point of
    the next workload, so a recovery that leaves subtle damage shows up later."""
    rng = random.Random(f"rounds-{mode}")
    t = Tracker()
    paths = new_pool(tmp_path, PowerWorld())
    for _ in range(5):
        workload_and_cut(paths, rng, t, mode, NOPS, last_io=300, log_size=rng.choice((None, 768)))
        recover_with_cuts(paths, rng, t, mode, cuts=1)
        assert_contract(paths, t)
        # The recovered pool is the new durable state.
        pool = Pool.open(paths)
        t.current = {name: (ld.raid, ld.size, np.frombuffer(ld.read(0, ld.size), dtype=np.uint8).copy())
                     for name, ld in pool.lds.items()}
        t.done(("flush",))
        pool.close()
    assert check_paths(paths, parity=True) == []
