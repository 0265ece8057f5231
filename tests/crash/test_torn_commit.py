"""Torn commits (DESIGN.md §9, issue 10 finding 1): a commit is all or nothing.

For every kind of commit — LD create (thin and thick), delete of a middle
snapshot, snapshot, copy on first write by handover (whole-segment and partial
writes), a snapclone's BGCOPY step and its leaving the tree, an invalidation in a
full pool, resize, attributes, task records and settings — each write into the
metadata log is cut, on each quorum copy in turn, at every record boundary of the
commit, next to each, inside the header and inside records: only a prefix of the
write reaches the drive (and, separately, only the part after the cut: a drive
that persisted a write's later blocks first). Then the power is gone; the pool is
reopened from the drives as they are and must:

- open, and ``vsand check`` (check_paths) finds nothing;
- read exactly like the state before the operation or the state after it, whole,
  never a mix (a thick create takes two commits; one cut short is removed at the
  next start, so it too is there completely or not at all) (names, roles, chains, every byte of every LD); a cut in the first
  copy of the first commit gives the state before, a cut in a later copy of the
  last commit the state after (the first copy already holds it whole);
- keep every snapshot a point-in-time copy: after new writes to every LD that is
  not a snapshot, each snapshot still reads what it read before.

The cut points come from a dry run of the same deterministic scenario that records
the bytes of every log write and parses the records out of them.
"""

from __future__ import annotations

import hashlib
import os

import msgpack
import pytest

from faultdrive import Faults, PowerCut
from vsand.disk.check import check_paths
from vsand.disk.pool import Pool
from vsand.errors import VsanError
from vsand.meta import format as fmt
from vsand.units import MiB, Units

UNITS = Units(quorum=8 * MiB)
SEG = MiB
LOG = (fmt.LOG_OFF, UNITS.quorum)


def pattern(seed: int, n: int) -> bytes:
    import numpy as np
    return np.random.default_rng(seed).integers(1, 256, size=n, dtype=np.uint8).tobytes()


# ---- scenarios: setup (ends durable), then the operation under test -----------------------
def base(pool, raid=5, size=4 * SEG):
    lun = pool.create_ld("lun", size, raid=raid)
    lun.write(0, pattern(1, size))
    pool.flush()
    return lun


def sc_create(pool):
    base(pool)
    return lambda: pool.create_ld("new", 4 * SEG, raid=1)


def sc_create_thick(pool):
    base(pool)
    return lambda: pool.create_ld("thick", 3 * SEG, raid=0, thick=True)


def sc_snapshot(pool):
    base(pool)
    return lambda: pool.snapshot("lun", "snap")


def sc_delete_middle(pool):
    lun = base(pool)
    pool.snapshot("lun", "s1")
    lun.write(0, pattern(2, SEG))
    pool.snapshot("lun", "s2")
    lun.write(SEG, pattern(3, 2 * SEG))
    pool.flush()
    return lambda: pool.delete_ld("s2")          # s1 reads through it: handover


def sc_cfw_whole(pool):
    lun = base(pool)
    pool.snapshot("lun", "snap")

    def op():
        lun.write(0, pattern(4, SEG))            # the finding: whole segment after a snapshot
        lun.write(2 * SEG, pattern(5, SEG))
        pool.flush()
    return op


def sc_cfw_partial(pool):
    lun = base(pool, raid=0)
    pool.snapshot("lun", "s1")
    pool.snapshot("lun", "s2")

    def op():
        lun.write(SEG + 100, b"partial write" * 50)
        pool.get("s1").write(3 * SEG + 7, b"into the middle snapshot")
        pool.flush()
    return op


def sc_bgcopy_step(pool):
    base(pool, raid=0)
    pool.snapclone("lun", "clone")

    def op():
        pool.bgcopy_step("clone", 2)
        pool.flush()
    return op


def sc_bgcopy_detach(pool):
    lun = base(pool, raid=0)
    pool.snapshot("lun", "s0")
    lun.write(SEG, pattern(6, SEG))
    pool.snapclone("lun", "clone")               # s0 <- clone <- lun
    for _ in range(20):                          # every copy made and durable
        if pool.clone_state("clone")["phase"] == "leave":
            break
        pool.bgcopy_step("clone", 1)
    pool.flush()

    def op():                                    # only leaving the tree is left: one commit
        assert pool.bgcopy_step("clone", 8)["done"]
    return op


def sc_invalidate(pool):
    lun = pool.create_ld("lun", 4 * SEG, raid=0)
    lun.write(0, pattern(1, 4 * SEG))
    pool.snapshot("lun", "snap")
    filler = pool.create_ld("filler", 120 * SEG, raid=0)     # more than the pool holds
    with pytest.raises(VsanError):           # allocates until the pool is full
        filler.write_zeroes(0, filler.size, may_trim=False)
    pool.flush()
    return lambda: lun.write(SEG + 10, b"lun wins")   # no space for the snapshot's copy


def sc_resize(pool):
    base(pool)
    return lambda: pool.resize_ld("lun", 2 * SEG)


def sc_attrs(pool):
    base(pool)
    return lambda: pool.set_attrs("lun", read_only=True)


def sc_task_and_setting(pool):
    base(pool)

    def op():
        pool.save_task({"id": 7, "kind": "bgcopy", "target": "lun", "state": "running", "done": 3})
        pool.set_setting("snapclone", "eager")
    return op


# States between before and after that a scenario may legitimately leave: a LUN write
# that invalidates a snapshot commits the invalidation first (it must be durable
# before the in-place write), so a cut after it finds the snapshot invalid and the
# unacknowledged write not done.
ALSO = {"invalidate": lambda before, after: [{**after, "lun": after["lun"][:-1] + (before["lun"][-1],)}]}

SCENARIOS = {
    "create": sc_create, "create-thick": sc_create_thick, "snapshot": sc_snapshot,
    "delete-middle": sc_delete_middle, "cfw-whole": sc_cfw_whole, "cfw-partial": sc_cfw_partial,
    "bgcopy-step": sc_bgcopy_step, "bgcopy-detach": sc_bgcopy_detach, "invalidate": sc_invalidate,
    "resize": sc_resize, "attrs": sc_attrs, "task-setting": sc_task_and_setting,
}


# ---- state ------------------------------------------------------------------------------
def state(pool) -> dict:
    """What a user can observe: per LD its role, chain, attributes, owned and shared
    segment counts (``vsanctl tree``) and every byte."""
    out = {}
    for name, ld in pool.lds.items():
        data = None if ld.invalid else hashlib.sha256(bytes(ld.read(0, ld.size))).hexdigest()
        out[name] = (ld.role.value, tuple(x.name for x in pool.chain(name)), ld.size,
                     bool(ld.read_only), ld.share_counts(), data)
    out["#tasks"] = sorted((k, v.get("state")) for k, v in pool.tasks.items())
    out["#settings"] = sorted(pool.settings.items())
    return out


def make(tmp, faults, n=8, size=64 * MiB):
    paths = [os.path.join(tmp, f"d{i:02d}.img") for i in range(n)]
    pool = Pool.create([(p, size, "default") for p in paths], UNITS, drive_factory=faults.open)
    return pool, paths


def drive_size(name: str) -> int:
    return 20 * MiB if name == "invalidate" else 64 * MiB


def dry_run(tmp, name):
    """(state before, state after, [(quorum copy, write number, bytes)]) of the op."""
    faults = Faults()
    pool, paths = make(tmp, faults, size=drive_size(name))
    op = SCENARIOS[name](pool)
    before = state(pool)
    faults.record = LOG
    faults.written.clear()
    op()
    pool.flush()
    after = state(pool)
    quorum = [paths[i] for i in pool.quorum_ids]
    per_copy: dict[str, list[bytes]] = {p: [] for p in quorum}
    for path, _off, data in faults.written:
        per_copy[path].append(data)
    pool.close()
    writes = [(c, i, data) for c, p in enumerate(quorum) for i, data in enumerate(per_copy[p])]
    assert writes, f"{name}: the operation wrote nothing to the log"
    return before, after, writes


def cut_points(blob: bytes) -> list[int]:
    """Offsets inside one commit unit: inside the header, at and next to every record
    boundary of its payload, and in the middle of each record."""
    head = fmt.COMMIT_HEAD.size
    pts = {0, 1, head // 2, head - 1, head, head + 1, len(blob) - 1}
    unp = msgpack.Unpacker(raw=False, strict_map_key=False)
    unp.feed(blob[head:])
    bounds = [head]
    n = unp.read_array_header()
    bounds.append(head + unp.tell())
    for _ in range(n):
        unp.skip()
        bounds.append(head + unp.tell())
    for a, b in zip(bounds, bounds[1:]):
        pts |= {a - 1, a, a + 1, (a + b) // 2}
    return sorted(p for p in pts if 0 <= p < len(blob))


def verify_after_cut(paths, before, after, also, expect, why):
    problems = check_paths(paths)
    assert problems == [], f"{why}: checker: {problems}"
    pool = Pool.open(paths)
    try:
        got = state(pool)
        if expect is not None:
            assert got == expect, f"{why}: reopened as {'the state after' if got == after else 'a mix'}"
        else:
            assert got in [before, after] + also, f"{why}: neither the state before nor after the operation"
        # every snapshot is still a point-in-time copy under new writes
        snaps = {n: bytes(ld.read(0, ld.size)) for n, ld in pool.lds.items()
                 if ld.role.snapshot or ld.role.copying}
        for n, ld in pool.lds.items():
            if not (ld.role.snapshot or ld.role.copying or ld.invalid or ld.read_only):
                ld.write(0, b"\xee" * (SEG + 5))
        for n, data in snaps.items():
            ld = pool.get(n)
            if ld.invalid:             # a full pool: the new writes invalidated it
                assert before.get("filler"), f"{why}: snapshot {n} invalidated with space to spare"
                continue
            assert bytes(ld.read(0, len(data))) == data, f"{why}: snapshot {n} changed"
        pool.flush()
    finally:
        pool.close()
    assert check_paths(paths) == [], f"{why}: checker after new writes"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_torn_commit_is_all_or_nothing(tmp_path, name):
    before, after, writes = dry_run(str(tmp_path / "dry"), name)
    assert before != after, f"{name}: the operation changed nothing observable"
    last = max(i for _, i, _ in writes)
    cases = 0
    for copy, i, blob in writes:
        for action in ("tear", "tear_tail"):
            points = cut_points(blob) if action == "tear" else [fmt.COMMIT_HEAD.size, len(blob) // 2]
            for keep in points:
                tmp = str(tmp_path / f"c{cases}")
                os.makedirs(tmp)
                faults = Faults()
                pool, paths = make(tmp, faults, size=drive_size(name))
                op = SCENARIOS[name](pool)
                quorum = [paths[q] for q in pool.quorum_ids]
                faults.add("pwrite", path=quorum[copy], region=LOG, nth=i + 1, action=action, keep=keep)
                faults.record = LOG
                faults.written.clear()
                with pytest.raises(PowerCut):
                    op()
                    pool.flush()
                for d in pool.drives.values():
                    d.close()
                off, meant = [(o, d) for p, o, d in faults.written if p == quorum[copy]][i]
                with open(quorum[copy], "rb") as f:
                    f.seek(off)
                    whole = f.read(len(meant)) == meant  # the cut dropped bytes equal to what was there
                expect = None
                if copy == 0 and i == 0 and not whole:
                    expect = before
                elif copy > 0 and i == last:
                    expect = after
                verify_after_cut(paths, before, after, ALSO.get(name, lambda b, a: [])(before, after), expect,
                                 f"{name}: log write {i} on quorum copy {copy} cut ({action}) at {keep} "
                                 f"of {len(blob)} bytes")
                cases += 1
    assert cases >= 3 * 2
