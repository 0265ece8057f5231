"""The checker never crashes (issue 10 item 7): whatever the drives hold, a problem
is a line of output and an exit code, never a traceback — and so is start-up
(Pool.open raises only typed errors).

Damage of two kinds: bytes (random bytes over a label, a superblock copy, the log,
a checkpoint blob, on one or on every quorum drive) and meaning (metadata with
valid checksums that says impossible things: an entry naming an RStore that does
not exist, an LD in a chain with itself, a record of an unknown kind, a member on
a drive the pool does not have).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest

from poolkit import make_pool
from vsand.disk.check import check_report
from vsand.disk.pool import Pool
from vsand.errors import VsanError
from vsand.mapping.lmap import make_entry
from vsand.meta import format as fmt
from vsand.units import MiB


def populated(tmp_path):
    pool, paths = make_pool(tmp_path)
    for raid in (0, 1, 5):
        ld = pool.create_ld(f"l{raid}", 8 * MiB, raid=raid)
        ld.write(MiB // 2, os.urandom(3 * MiB))
    pool.snapshot("l5", "s5")
    pool.get("l5").write(0, b"after the snapshot" * 1000)
    pool.flush()                       # leave log records behind
    ckpt = pool.ckpt
    for d in pool.drives.values():     # a crash: no checkpoint at close
        d.close()
    pool.closed = True
    return paths, ckpt


def scribble(path: str, off: int, n: int, rng: random.Random) -> None:
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(rng.randbytes(n))


def cli(paths) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vsand", "check"] + sum((["--drive", p] for p in paths), [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def assert_handled(paths, why):
    try:
        rep = check_report(paths, parity=True)
    except Exception as e:           # noqa: BLE001
        pytest.fail(f"{why}: the checker raised {type(e).__name__}: {e}")
    try:
        Pool.open(paths, readonly=True).close()
    except VsanError:
        pass
    except Exception as e:           # noqa: BLE001
        pytest.fail(f"{why}: opening raised {type(e).__name__}: {e}")
    return rep


WHERE = {
    "label": lambda ck: [(0, fmt.LABEL.size)],
    "superblock A": lambda ck: [(fmt.SB_SLOT_OFF[0], 4096)],
    "both superblocks": lambda ck: [(fmt.SB_SLOT_OFF[0], fmt.SB_SLOT_SIZE), (fmt.SB_SLOT_OFF[1], fmt.SB_SLOT_SIZE)],
    "log head": lambda ck: [(fmt.LOG_OFF, 64)],
    "log body": lambda ck: [(fmt.LOG_OFF + 100, 4096)],
}


@pytest.mark.parametrize("where", list(WHERE))
@pytest.mark.parametrize("how_many", ["one drive", "every quorum drive"])
def test_random_bytes_anywhere_in_the_metadata(tmp_path, where, how_many):
    paths, ckpt = populated(tmp_path)
    rng = random.Random(f"{where}-{how_many}")
    targets = paths[:1] if how_many == "one drive" else paths[:3]
    for p in targets:
        for off, n in WHERE[where](ckpt):
            scribble(p, off, n, rng)
    rep = assert_handled(paths, f"{where} on {how_many}")
    r = cli(paths)
    assert r.returncode in (0, 1, 3) and "Traceback" not in r.stderr + r.stdout, r.stderr
    if how_many == "one drive":        # the metadata is redundant: the pool still opens
        Pool.open(paths, readonly=True).close()
        assert not any("cannot be opened" in p for p in rep.problems), rep.problems


def test_random_bytes_in_checkpoint_blobs(tmp_path):
    pool, paths = make_pool(tmp_path)
    pool.create_ld("x", 8 * MiB, raid=5).write(0, os.urandom(2 * MiB))
    pool.close()                       # the checkpoint holds everything, the log is empty
    pool = Pool.open(paths, readonly=True)
    ckpt, units = pool.ckpt, pool.units
    pool.close()
    rng = random.Random(7)
    for i, (d, psegs) in enumerate(ckpt["copies"]):
        scribble(paths[d], units.quorum + psegs[0] * units.pseg + 40, 300, rng)
        rep = assert_handled(paths, f"checkpoint copy {i} damaged")
        if i < len(ckpt["copies"]) - 1:
            assert rep.problems == [f"checkpoint copy on drive {d}: checkpoint: checksum mismatch"] \
                or rep.problems and all("checkpoint copy" in p for p in rep.problems), rep.problems
        else:
            assert any("no readable checkpoint copy" in p for p in rep.problems), rep.problems
            r = cli(paths)
            assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout


def lying_pool(tmp_path, lie):
    """A pool whose metadata is well formed (checksums valid) but says ``lie``."""
    pool, paths = make_pool(tmp_path)
    a = pool.create_ld("a", 4 * MiB, raid=0)
    a.write(0, os.urandom(2 * MiB))
    pool.flush()
    lie(pool)
    pool.checkpoint()
    for d in pool.drives.values():
        d.close()
    pool.closed = True
    return paths


LIES = {
    "entry names a missing RStore": lambda pool: pool.get("a").l2.set(3, make_entry(9999, 2)),
    "two entries own one slot": lambda pool: pool.get("a").l2.set(3, pool.get("a").l2.get(0)),
    "LD is its own predecessor": lambda pool: setattr(pool.get("a"), "pred", pool.get("a")),
    "member on a drive the pool lacks": lambda pool: pool.space.table(0, "default").set_member(0, 1, (200 << 24) | 5),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_well_formed_metadata_that_lies(tmp_path, lie):
    paths = lying_pool(tmp_path, LIES[lie])
    rep = assert_handled(paths, lie)
    assert rep.problems, f"{lie}: nothing reported"
    r = cli(paths)
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, (r.stdout, r.stderr)


def test_record_of_unknown_kind_in_the_log_is_a_typed_error(tmp_path):
    pool, paths = make_pool(tmp_path)
    pool.create_ld("a", 4 * MiB, raid=0)
    pool.journal.add({"t": "nonsense"})
    pool.flush()
    for d in pool.drives.values():
        d.close()
    pool.closed = True
    rep = assert_handled(paths, "unknown record")
    assert any("record 'nonsense'" in p for p in rep.problems), rep.problems
    with pytest.raises(VsanError):
        Pool.open(paths)
    np.testing.assert_equal(cli(paths).returncode, 1)
