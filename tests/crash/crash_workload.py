"""Deterministic workload and oracle for the kill -9 crash tests (DESIGN.md §9, §12).

The same seed always gives the same list of operations and the same payloads, so
the test process can recompute what a killed child wrote. The child records its
progress in a side file that survives SIGKILL (unbuffered appends):

    S i   operation i is about to start
    D i   operation i returned (for "flush"/"ckpt": everything before is durable)

Run as a child process:

    python crash_workload.py run STATE_DIR SEED NOPS SIDEFILE [IO]
        opens the pool, runs ops(SEED, NOPS) and closes it (when no crash point fires)
    python crash_workload.py open STATE_DIR [IO]
        only opens (recovers) and closes the pool, e.g. with a crash point armed

IO is the drives' I/O mode (Drive.open: buffered, direct or auto, the default).

Crash points are armed by the caller with ``VSAND_CRASHPOINT=name[:n]``.
"""

from __future__ import annotations

import glob
import os
import random
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from vsand.disk.pool import Pool  # noqa: E402
from vsand.units import KiB, MiB, Units  # noqa: E402

BLOCK = 4 * KiB
UNITS = Units(quorum=8 * MiB)
NDRIVES = 8
DRIVE_SIZE = 160 * MiB
LD_SIZE = 16 * MiB
LDS = (("r0", 0), ("r1", 1), ("r5", 5))
RAID = dict(LDS)


def drive_paths(state_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(state_dir, "drives", "*.img")))


def create_pool(state_dir: str, io: str = "auto") -> tuple[Pool, list[str]]:
    specs = [(os.path.join(state_dir, "drives", f"d{i:02d}.img"), DRIVE_SIZE, "default")
             for i in range(NDRIVES)]
    pool = Pool.create(specs, UNITS, io=io)
    for name, raid in LDS:
        pool.create_ld(name, LD_SIZE, raid=raid)
    return pool, [p for p, _, _ in specs]


# ---- operations ------------------------------------------------------------------------
def ops(seed: int, n: int, flush_every: int = 9, ckpt_every: int = 23) -> list[tuple]:
    """("write", ld, off, n) | ("trim", ld, off, n) | ("flush",) | ("ckpt",); all 4 KiB aligned.

    Flushes and checkpoints come at fixed strides so that every crash point is passed
    a predictable number of times."""
    rng = random.Random(seed)
    out: list[tuple] = []
    nblocks = LD_SIZE // BLOCK
    for i in range(1, n + 1):
        if ckpt_every and i % ckpt_every == 0:
            out.append(("ckpt",))
            continue
        if flush_every and i % flush_every == 0:
            out.append(("flush",))
            continue
        name = rng.choice(LDS)[0]
        r = rng.random()
        if r < 0.55:      # small, often inside one stripe unit
            nb = rng.randint(1, 16)
        elif r < 0.85:    # crosses columns / segments
            nb = rng.randint(17, 400)
        else:             # whole segments
            nb = 256 * rng.randint(1, 2)
        if nb % 256 == 0 and rng.random() < 0.7:
            b0 = 256 * rng.randrange(nblocks // 256 - nb // 256 + 1)
        else:
            b0 = rng.randrange(nblocks - nb + 1)
        kind = "trim" if rng.random() < 0.12 else "write"
        out.append((kind, name, b0 * BLOCK, nb * BLOCK))
    return out


def payload(seed: int, i: int, n: int) -> bytes:
    return random.Random(seed * 1_000_003 + i).randbytes(n)


def op_data(seed: int, i: int, op: tuple) -> bytes | None:
    if op[0] == "write":
        return payload(seed, i, op[3])
    if op[0] == "trim":
        return bytes(op[3])
    return None


def run_op(pool: Pool, seed: int, i: int, op: tuple) -> None:
    kind = op[0]
    if kind == "write":
        pool.get(op[1]).write(op[2], op_data(seed, i, op))
    elif kind == "trim":
        pool.get(op[1]).trim(op[2], op[3])
    elif kind == "flush":
        pool.flush()
    elif kind == "ckpt":
        pool.checkpoint()
    else:
        raise ValueError(kind)


# ---- oracle ------------------------------------------------------------------------------
def new_model() -> dict[str, np.ndarray]:
    return {name: np.zeros(LD_SIZE, dtype=np.uint8) for name, _ in LDS}


def apply(model: dict[str, np.ndarray], seed: int, i: int, op: tuple) -> None:
    data = op_data(seed, i, op)
    if data is not None:
        model[op[1]][op[2]:op[2] + op[3]] = np.frombuffer(data, dtype=np.uint8)


def read_progress(sidefile: str) -> tuple[int, int]:
    """(index of the last operation that returned, last that started); -1 for none."""
    done = started = -1
    with open(sidefile) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 2:
                continue        # a torn last line cannot happen with O_APPEND, but be lenient
            if parts[0] == "S":
                started = max(started, int(parts[1]))
            elif parts[0] == "D":
                done = max(done, int(parts[1]))
    return done, started


def durable_prefix(op_list: list[tuple], done: int) -> int:
    """Number of leading operations covered by the last flush/checkpoint that returned."""
    last = -1
    for i in range(done + 1):
        if op_list[i][0] in ("flush", "ckpt"):
            last = i
    return last + 1


def check_blocks(got: np.ndarray, durable: np.ndarray, later: list[tuple[int, int, bytes]]) -> list[str]:
    """Every 4 KiB block reads as its durable value, or - if an operation after the last
    durable point touched it - as the value one of those operations gave it.
    ``later`` = [(offset, length, post-image bytes)]. Returns problems (block numbers)."""
    g = got.reshape(-1, BLOCK)
    ok = np.all(g == durable.reshape(-1, BLOCK), axis=1)
    touched = np.zeros(len(ok), dtype=bool)
    for off, n, post in later:
        b0, nb = off // BLOCK, n // BLOCK
        touched[b0:b0 + nb] = True
        seg = g[b0:b0 + nb]
        ok[b0:b0 + nb] |= np.all(seg == np.frombuffer(post, dtype=np.uint8).reshape(-1, BLOCK), axis=1)
    bad = np.flatnonzero(~ok)
    out = []
    for b in bad[:8].tolist():
        zeros = not g[b].any()
        out.append(f"block {b} (byte {b * BLOCK}): {'touched' if touched[b] else 'untouched'} after the "
                   f"last flush, reads {'zeros' if zeros else 'bytes'} matching no allowed value")
    if len(bad) > 8:
        out.append(f"... {len(bad)} bad blocks in all")
    return out


def consistency_problems(pool: Pool) -> list[str]:
    """RAID1 copies agree and RAID5 parity matches data for every allocated segment."""
    out = []
    for ld in pool.lds_by_id.values():
        ks, es = ld.l2.allocated()
        for k, e in zip(ks.tolist(), es.tolist()):
            members = pool.space.members(ld.table, (e >> 3) & 0x1FFFFFF)
            if not pool.rio.consistent(ld.raid, members, e & 7):
                out.append(f"LD {ld.name} segment {k} (RAID{ld.raid}): redundancy disagrees with data")
    return out


# ---- child process -------------------------------------------------------------------
def main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "run":
        state_dir, seed, nops, sidefile = argv[1], int(argv[2]), int(argv[3]), argv[4]
        io = argv[5] if len(argv) > 5 else "auto"
        op_list = ops(seed, nops)
        fd = os.open(sidefile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        pool = Pool.open(drive_paths(state_dir), io=io)
        for i, op in enumerate(op_list):
            os.write(fd, f"S {i}\n".encode())
            run_op(pool, seed, i, op)
            os.write(fd, f"D {i}\n".encode())
        pool.close()
        os.close(fd)
        return 0
    if cmd == "open":
        Pool.open(drive_paths(argv[1]), io=argv[2] if len(argv) > 2 else "auto").close()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
