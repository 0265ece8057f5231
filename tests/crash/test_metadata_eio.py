"""EIO at each metadata I/O call (DESIGN.md §9, issue 10 finding 2), in-process.

A scenario creates a pool, LUNs (thin and thick), writes, a snapshot, a copy on
first write, a delete, a checkpoint and a clean close. A dry run lists every
metadata call it makes: each drive label write, superblock write, log append,
checkpoint blob write, and every fsync (of pool creation, of data syncs, of the
log and the checkpoint). Then, for each of those calls in turn, the scenario runs
again with that one call failing with EIO, and:

- each operation either succeeds or raises a VsanError (never anything else);
- a failed catalog operation (create, snapshot, delete) did not happen — not in
  memory, and not after reopening;
- the pool goes on (its metadata rewritten from memory), and reopened from the
  drives it reads exactly as it did when it was closed: every LD, every byte;
- the checker finds nothing and never raises;
- a failure inside pool creation leaves either a pool that opens or drives that
  are recognised as a pool whose creation never completed (HalfCreated).
"""

from __future__ import annotations

import hashlib
import os


from faultdrive import Faults
from vsand.disk.assembly import has_label
from vsand.disk.check import check_paths
from vsand.disk.pool import Pool
from vsand.errors import HalfCreated, VsanError
from vsand.meta import format as fmt
from vsand.units import MiB, Units

UNITS = Units(quorum=8 * MiB)
SEG = MiB
META_REGIONS = [(0, fmt.LABEL_SIZE), (fmt.SB_SLOT_OFF[0], fmt.LOG_OFF), (fmt.LOG_OFF, UNITS.quorum)]


def pattern(seed: int, n: int) -> bytes:
    import numpy as np
    return np.random.default_rng(seed).integers(1, 256, size=n, dtype=np.uint8).tobytes()


def scenario(tmp: str, faults: Faults) -> tuple[list[str], dict, list[str]]:
    """Runs the scenario; returns (drive paths, what the pool held when closed, the
    catalog operations that failed). Raises only if pool creation failed."""
    paths = [os.path.join(tmp, f"d{i:02d}.img") for i in range(8)]
    pool = Pool.create([(p, 64 * MiB, "default") for p in paths], UNITS, drive_factory=faults.open)
    failed: list[str] = []

    def step(what, fn):
        try:
            fn()
        except VsanError:
            failed.append(what)

    step("create a", lambda: pool.create_ld("a", 4 * SEG, raid=5))
    step("create b", lambda: pool.create_ld("b", 4 * SEG, raid=1))
    for name, seed in (("a", 1), ("b", 2)):
        if name in pool.lds:
            step(f"write {name}", lambda: pool.get(name).write(0, pattern(seed, 2 * SEG)))
            step("flush", pool.flush)
    if "a" in pool.lds:
        step("snapshot s", lambda: pool.snapshot("a", "s"))
        step("write a", lambda: pool.get("a").write(100, pattern(3, SEG)))   # copy on first write
        step("flush", pool.flush)
    step("create c", lambda: pool.create_ld("c", 2 * SEG, raid=0, thick=True))
    if "s" in pool.lds:
        step("delete s", lambda: pool.delete_ld("s"))
    step("checkpoint", pool.checkpoint)
    if "b" in pool.lds:
        step("write b", lambda: pool.get("b").write(3 * SEG - 7, b"tail" * 100))
    assert pool.tx.failure() is None, f"one EIO turned the pool read-only: {pool.tx.failed}"
    held = contents(pool)
    pool.close()
    return paths, held, failed


def contents(pool) -> dict:
    return {n: (ld.role.value, ld.size, hashlib.sha256(bytes(ld.read(0, ld.size))).hexdigest())
            for n, ld in pool.lds.items()}


def metadata_calls(faults: Faults) -> list[tuple[str, str, int]]:
    """(call, path, n-th such call on that path) of every metadata call made."""
    out, seen = [], {}
    for call, path, off, n in faults.calls:
        key = (call, path)
        seen[key] = seen.get(key, 0) + 1
        if call == "fsync" or (call == "pwrite" and (any(lo <= off < hi for lo, hi in META_REGIONS)
                                                     or faults_blob(faults, path, off))):
            out.append((call, path, seen[key]))
    return out


def faults_blob(faults: Faults, path: str, off: int) -> bool:
    return any(p == path and o == off and d.startswith(fmt.CKPT_MAGIC) for p, o, d in faults.written)


def test_dry_run_covers_every_kind_of_metadata_call(tmp_path):
    faults = Faults()
    faults.record = (UNITS.quorum, 1 << 40)
    paths, held, failed = scenario(str(tmp_path), faults)
    assert failed == [] and sorted(held) == ["a", "b", "c"]
    calls = metadata_calls(faults)
    kinds = {c for c, _, _ in calls}
    assert kinds == {"pwrite", "fsync"}
    assert any(faults_blob(faults, p, o) for _, p, o, _ in faults.calls), "no checkpoint blob written"
    assert len(calls) > 100


def test_one_eio_at_each_metadata_call(tmp_path):
    dry = Faults()
    dry.record = (UNITS.quorum, 1 << 40)
    scenario(str(tmp_path / "dry"), dry)
    calls = metadata_calls(dry)
    outcomes = {"created": 0, "half-created": 0, "op failed": 0, "no effect": 0}
    for i, (call, path, nth) in enumerate(calls):
        tmp = str(tmp_path / f"c{i}")
        os.makedirs(tmp)
        faults = Faults()
        rel = os.path.basename(path)
        faults.add(call, path=os.path.join(tmp, rel), nth=nth)
        why = f"EIO at {call} #{nth} of {rel}"
        try:
            paths, held, failed = scenario(tmp, faults)
        except VsanError:                 # inside pool creation
            paths = [os.path.join(tmp, f"d{j:02d}.img") for j in range(8)]
            try:
                if not any(has_label(p) for p in paths):   # what the daemon formats anew
                    raise HalfCreated("no label written")
                pool = Pool.open(paths)
            except HalfCreated:
                outcomes["half-created"] += 1
                Pool.create([(p, 64 * MiB, "default") for p in paths], UNITS).close()
                assert check_paths(paths) == [], why
                continue
            assert not pool.lds, why
            pool.close()
            outcomes["created"] += 1
            assert check_paths(paths) == [], why
            continue
        assert faults.rules[0].fired, f"{why}: never reached"
        outcomes["op failed" if failed else "no effect"] += 1
        for op in failed:
            kind, _, name = op.partition(" ")
            if kind == "create":
                assert name not in held, f"{why}: {op} failed but {name} exists"
            elif kind == "snapshot":
                assert name not in held, f"{why}: {op} failed but {name} exists"
            elif kind == "delete":
                assert name in held, f"{why}: {op} failed but {name} is gone"
        assert check_paths(paths) == [], why
        pool = Pool.open(paths)
        try:
            assert contents(pool) == held, f"{why}: reopened pool differs from the closed one"
        finally:
            pool.close()
    assert outcomes["op failed"] and outcomes["half-created"], outcomes
