"""kill -9 in the middle of snapshot work, then recover (DESIGN.md §7, §9, §12).

A child process (this file run as a script) opens a pool holding a RAID5 and a
RAID1 LUN, runs a deterministic workload of writes, trims, snapshots of LUNs and
of snapshots, writes to snapshots (middle snapshots copy twice), deletes anywhere
in a chain and flushes, and SIGKILLs itself the n-th time it passes a crash point
(``VSAND_CRASHPOINT``):

- ``cfw.after_copy``: a copy on first write has written the new segment, the maps
  do not point at it yet;
- ``cfw.after_handover``: the maps changed (the predecessor took the old segment,
  the writer a new one), the write itself has not happened, nothing committed;
- ``delete.after_unlink``: the "ldd" is committed and applied, the PSEGs it freed
  not yet returned by the commit that follows;
- ``snapshot.before_commit``: a snapshot is validated, nothing of it committed;
- ``op.after_commit``: a catalog operation (snapshot, delete) is committed, with
  the writes pending before it, and not yet applied in memory;
- ``commit.after_data_sync``: in the middle of any commit.

This process replays the same operations on a bytearray model and checks after
recovery: every snapshot never written reads exactly what its source held when it
was created; every LD reads its flushed contents, except blocks written after the
last durable point, which read either their old value or a value written since
(never anything else); snapshots and deletes that returned are there / gone; one
that was cut short is there completely or not at all; a second kill right after
recovery changes nothing; ``check_paths(paths, parity=True)`` is clean.

A last case kills the child right after a LUN write that invalidated an
on-demand snapshot (no space for its copy): after recovery the snapshot is either
invalid or holds its old bytes, never the LUN's new ones.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from vsand.disk.check import check_paths  # noqa: E402
from vsand.disk.pool import Pool  # noqa: E402
from vsand.errors import IOFailure, NoSpace  # noqa: E402
from vsand.units import KiB, MiB, Units  # noqa: E402

BLOCK = 4 * KiB
SEG = MiB
UNITS = Units(quorum=8 * MiB)
LUN_SIZE = 6 * MiB
LUNS = (("r5", 5), ("r1", 1))
MAX_SNAPS = 5
NOPS = 90


def drive_paths(state: str, n: int = 8) -> list[str]:
    return [os.path.join(state, f"d{i:02d}.img") for i in range(n)]


def payload(seed: int, i: int, n: int) -> bytes:
    return random.Random(seed * 1_000_003 + i).randbytes(n)


# ---- the workload ---------------------------------------------------------------------
def ops(seed: int, n: int) -> list[tuple]:
    """("write"|"trim", ld, off, len) | ("snap", src, name) | ("delete", name) | ("flush",).
    Every operation is valid in sequence (no space problems in this pool)."""
    rng = random.Random(seed)
    lds = [name for name, _ in LUNS]
    snaps: list[str] = []
    out: list[tuple] = []
    nblocks = LUN_SIZE // BLOCK
    made = 0
    for _ in range(n):
        r = rng.random()
        if r < 0.14 and len(snaps) < MAX_SNAPS:
            src = rng.choice(lds) if not snaps or rng.random() < 0.6 else rng.choice(snaps)
            made += 1
            name = f"s{made}"
            snaps.append(name)
            lds.append(name)
            out.append(("snap", src, name))
        elif r < 0.20 and snaps:
            name = rng.choice(snaps)
            snaps.remove(name)
            lds.remove(name)
            out.append(("delete", name))
        elif r < 0.28:
            out.append(("flush",))
        else:
            target = rng.choice(snaps) if snaps and rng.random() < 0.2 else rng.choice([n for n, _ in LUNS])
            x = rng.random()
            if x < 0.5:                                   # small, inside a segment mostly
                nb = rng.randint(1, 16)
                b0 = rng.randrange(nblocks - nb + 1)
            elif x < 0.75:                                # whole segments
                nb = 256 * rng.randint(1, 2)
                b0 = 256 * rng.randrange(nblocks // 256 - nb // 256 + 1)
            else:                                         # across a segment boundary
                k = rng.randrange(1, LUN_SIZE // SEG)
                b0 = k * 256 - rng.randint(1, 200)
                nb = min(rng.randint(201, 400), nblocks - b0)
            kind = "trim" if rng.random() < 0.15 else "write"
            out.append((kind, target, b0 * BLOCK, nb * BLOCK))
    return out


def op_data(seed: int, i: int, op: tuple) -> bytes:
    return payload(seed, i, op[3]) if op[0] == "write" else bytes(op[3])


def run_op(pool: Pool, seed: int, i: int, op: tuple) -> None:
    kind = op[0]
    if kind == "write":
        pool.get(op[1]).write(op[2], op_data(seed, i, op))
    elif kind == "trim":
        pool.get(op[1]).trim(op[2], op[3])
    elif kind == "snap":
        pool.snapshot(op[1], op[2])
    elif kind == "delete":
        pool.delete_ld(op[1])
    elif kind == "flush":
        pool.flush()
    else:
        raise ValueError(kind)


def setup_pool(state: str, seed: int) -> dict[str, np.ndarray]:
    """Two LUNs fully written (every segment allocated, so CFW copies real data)."""
    os.makedirs(state, exist_ok=True)
    pool = Pool.create([(p, 128 * MiB, "default") for p in drive_paths(state)], UNITS)
    model = {}
    for j, (name, raid) in enumerate(LUNS):
        ld = pool.create_ld(name, LUN_SIZE, raid=raid)
        buf = random.Random(seed * 7 + j).randbytes(LUN_SIZE)
        ld.write(0, buf)
        model[name] = np.frombuffer(buf, dtype=np.uint8).copy()
    pool.close()
    return model


# ---- the oracle -------------------------------------------------------------------------
def read_progress(sidefile: str) -> tuple[int, int]:
    done = started = -1
    with open(sidefile) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and parts[0] in "SD":
                v = int(parts[1])
                if parts[0] == "S":
                    started = max(started, v)
                else:
                    done = max(done, v)
    return done, started


class Expect:
    """What the recovered pool may hold, from replaying the operations on a model."""

    def __init__(self, base: dict[str, np.ndarray], seed: int, op_list: list[tuple], done: int, started: int):
        img = {k: v.copy() for k, v in base.items()}
        durable = {k: v.copy() for k, v in img.items()}
        later: dict[str, list] = {k: [] for k in img}
        created: dict[str, np.ndarray] = {}        # snapshot -> its source's bytes at creation
        written: set[str] = set()
        self.maybe_new: tuple[str, np.ndarray] | None = None   # cut-short snapshot
        self.maybe_gone: str | None = None                     # cut-short delete
        for i in range(done + 1):
            op = op_list[i]
            if op[0] in ("write", "trim"):
                img[op[1]][op[2]:op[2] + op[3]] = np.frombuffer(op_data(seed, i, op), np.uint8)
                later[op[1]].append((op[2], op[3], op_data(seed, i, op)))
                written.add(op[1])
            elif op[0] == "snap":
                img[op[2]] = img[op[1]].copy()
                created[op[2]] = img[op[1]].copy()
            elif op[0] == "delete":
                del img[op[1]]
                created.pop(op[1], None)
            if op[0] in ("snap", "delete", "flush"):   # everything so far is durable
                durable = {k: v.copy() for k, v in img.items()}
                later = {k: [] for k in img}
        if started > done:
            op = op_list[started]
            if op[0] in ("write", "trim"):
                later[op[1]].append((op[2], op[3], op_data(seed, started, op)))
            elif op[0] == "snap":
                self.maybe_new = (op[2], img[op[1]].copy())
            elif op[0] == "delete":
                self.maybe_gone = op[1]
        self.durable, self.later, self.created, self.written = durable, later, created, written
        self.img = img

    def problems(self, name: str, got: np.ndarray) -> list[str]:
        if self.maybe_new and name == self.maybe_new[0]:
            want = self.maybe_new[1]
            if not np.array_equal(got, want):
                return [f"{name} (snapshot cut short, but committed): differs from its source at "
                        f"{np.flatnonzero(got != want)[:5].tolist()}"]
            return []
        if name in self.created and name not in self.written and not self.later[name]:
            want = self.created[name]
            if not np.array_equal(got, want):
                bad = np.flatnonzero(got != want)
                return [f"snapshot {name} does not read what its source held at its creation: "
                        f"{len(bad)} bytes differ, first at {int(bad[0])}"]
            return []
        g = got.reshape(-1, BLOCK)
        ok = np.all(g == self.durable[name].reshape(-1, BLOCK), axis=1)
        for off, n, post in self.later[name]:
            b0, nb = off // BLOCK, n // BLOCK
            ok[b0:b0 + nb] |= np.all(g[b0:b0 + nb] == np.frombuffer(post, np.uint8).reshape(-1, BLOCK), axis=1)
        bad = np.flatnonzero(~ok)
        return [f"{name} block {b} (byte {b * BLOCK}) matches neither its flushed value nor a later write"
                for b in bad[:5].tolist()]


def read_all(pool: Pool) -> dict[str, np.ndarray]:
    return {name: np.frombuffer(bytes(ld.read(0, ld.size)), dtype=np.uint8) for name, ld in pool.lds.items()}


def verify(paths: list[str], exp: Expect, ctx: str) -> None:
    pool = Pool.open(paths)
    names = set(pool.lds)
    must = set(exp.durable) - ({exp.maybe_gone} if exp.maybe_gone else set())
    may = must | ({exp.maybe_gone} if exp.maybe_gone else set()) | (
        {exp.maybe_new[0]} if exp.maybe_new else set())
    assert must <= names <= may, f"{ctx}: LDs {sorted(names)}, must {sorted(must)}, may {sorted(may)}"
    got = read_all(pool)
    problems = []
    for name, data in got.items():
        problems += exp.problems(name, data)
    assert not problems, ctx + "\n" + "\n".join(problems)
    # A second kill right after recovery (no clean close) gives the same bytes.
    for d in pool.drives.values():
        d.close()
    pool = Pool.open(paths)
    again = read_all(pool)
    assert sorted(again) == sorted(got), ctx
    for name in got:
        assert np.array_equal(again[name], got[name]), f"{ctx}: {name} changed across a second reopen"
    pool.close()
    assert check_paths(paths, parity=True) == [], ctx


def run_child(args: list[str], crash: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("VSAND_CRASHPOINT", None)
    if crash:
        env["VSAND_CRASHPOINT"] = crash
    return subprocess.run([sys.executable, os.path.abspath(__file__)] + args, env=env,
                          capture_output=True, text=True, timeout=120)


# ---- tests ------------------------------------------------------------------------------
# (crash point, n): the n-th pass kills the child; each is passed more than n times
# by ops(seed, NOPS) for the seed the case uses (the test checks the child died).
CASES = [
    ("cfw.after_copy", 1),
    ("cfw.after_copy", 4),
    ("cfw.after_copy", 11),
    ("cfw.after_handover", 1),
    ("cfw.after_handover", 6),
    ("cfw.after_handover", 17),
    ("delete.after_unlink", 1),
    ("delete.after_unlink", 3),
    ("op.after_commit", 2),
    ("op.after_commit", 5),
    ("snapshot.before_commit", 1),
    ("snapshot.before_commit", 4),
    ("commit.after_data_sync", 7),
]


def _case(tmp_path, point: str, n: int, seed: int) -> None:
    state = str(tmp_path / "state")
    base = setup_pool(state, seed)
    side = str(tmp_path / "progress")
    r = run_child(["run", state, str(seed), str(NOPS), side], f"{point}:{n}")
    assert r.returncode == -signal.SIGKILL, f"crash point {point}:{n} not reached (rc {r.returncode})\n{r.stderr}"
    done, started = read_progress(side)
    op_list = ops(seed, NOPS)
    exp = Expect(base, seed, op_list, done, started)
    verify(drive_paths(state), exp, f"{point}:{n}, seed {seed}, last done {done} "
                                    f"({op_list[done] if done >= 0 else None}), started {started} "
                                    f"({op_list[started] if started >= 0 else None})")


@pytest.mark.parametrize("point,n", CASES, ids=[f"{p}:{n}" for p, n in CASES])
def test_kill_during_snapshot_work(tmp_path, point, n):
    _case(tmp_path, point, n, seed=11 + CASES.index((point, n)))


def test_workload_without_crash(tmp_path):
    """The workload itself: every operation succeeds and the model matches exactly."""
    seed = 3
    state = str(tmp_path / "state")
    base = setup_pool(state, seed)
    side = str(tmp_path / "progress")
    r = run_child(["run", state, str(seed), str(NOPS), side], None)
    assert r.returncode == 0, r.stderr
    op_list = ops(seed, NOPS)
    kinds = {op[0] for op in op_list}
    assert kinds >= {"write", "trim", "snap", "delete", "flush"}
    assert any(op[0] == "snap" and op[1].startswith("s") for op in op_list), "no snapshot of a snapshot"
    done, started = read_progress(side)
    assert done == started == NOPS - 1
    exp = Expect(base, seed, op_list, done, started)
    pool = Pool.open(drive_paths(state))
    got = read_all(pool)
    pool.close()
    assert sorted(got) == sorted(exp.img)
    for name, want in exp.img.items():
        assert np.array_equal(got[name], want), name
    assert check_paths(drive_paths(state), parity=True) == []


def test_kill_after_write_that_invalidated_a_snapshot(tmp_path):
    """A LUN write that finds no space for an on-demand snapshot's copy invalidates
    the snapshot and then writes in place over bytes the committed maps still give
    the snapshot. Killed right after that write (no flush), the pool must come back
    with the snapshot invalid, or valid with its old bytes: never valid and showing
    the LUN's new data. A kill just before the invalidation commits leaves the
    snapshot valid and intact."""
    for crash in (None, "cfw.before_invalidate_commit:1"):
        state = str(tmp_path / ("a" if crash is None else "b"))
        os.makedirs(state)
        paths = drive_paths(state)
        pool = Pool.create([(p, 8 * MiB + 12 * 2 * MiB, "default") for p in paths], UNITS)
        lun = pool.create_ld("lun", 4 * MiB, raid=0)
        orig = random.Random(5).randbytes(4 * MiB)
        lun.write(0, orig)
        pool.snapshot("lun", "snap")
        filler = pool.create_ld("filler", 200 * MiB, raid=0)
        k = 0
        try:
            while True:
                filler.write(k * SEG, bytes([7]) * SEG)
                k += 1
        except NoSpace:
            pass
        pool.close()
        r = run_child(["invalidate", state], crash)
        assert r.returncode == -signal.SIGKILL, r.stderr
        pool = Pool.open(paths)
        snap = pool.get("snap")
        if crash is None:
            assert snap.invalid, "the invalidation was not durable before the in-place write"
            try:
                snap.read(0, 512)
                raise AssertionError("an invalid snapshot answered a read")
            except IOFailure:
                pass
        else:
            assert not snap.invalid
            assert snap.read(0, 4 * MiB) == orig
        got = pool.get("lun").read(SEG, 16)
        assert got in (orig[SEG:SEG + 16], b"lun wins" + orig[SEG + 8:SEG + 16])
        pool.close()
        assert check_paths(paths, parity=True) == []


# ---- child process ---------------------------------------------------------------------
def main(argv: list[str]) -> int:
    if argv[0] == "run":
        state, seed, nops, side = argv[1], int(argv[2]), int(argv[3]), argv[4]
        fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        pool = Pool.open(drive_paths(state))
        for i, op in enumerate(ops(seed, nops)):
            os.write(fd, f"S {i}\n".encode())
            run_op(pool, seed, i, op)
            os.write(fd, f"D {i}\n".encode())
        pool.close()
        return 0
    if argv[0] == "invalidate":
        pool = Pool.open(drive_paths(argv[1]))
        pool.get("lun").write(SEG, b"lun wins")     # no room for the snapshot's copy
        assert pool.get("snap").invalid
        os.kill(os.getpid(), signal.SIGKILL)        # kill -9 before any flush
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
