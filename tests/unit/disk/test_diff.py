"""Changed-block diffs (disk/diff.py): from share bits and maps only, a safe superset.

Every test also checks the promise behind a diff against the bytes: a segment that
is not reported reads the same in both LDs.
"""

from __future__ import annotations

import numpy as np
import pytest

from poolkit import make_pool
from test_invalid_snapshot import tight_pool
from vsand.disk import diff
from vsand.disk.sharing import resolve_range
from vsand.errors import InvalidArgument
from vsand.units import MiB, Units

SEG = MiB


def segs(newer, older=None) -> list[int]:
    """Reported segments, from the byte extents."""
    out = []
    for off, n in diff.diff_extents(newer, older):
        assert off % SEG == 0 and n % SEG == 0 and n > 0
        out += range(off // SEG, (off + n) // SEG)
    return out


def assert_safe(a, b) -> None:
    """Unreported segments read equal; segments resolving to one entry are unreported."""
    reported = set(segs(a, b))
    ea, eb = resolve_range(a, 0, a.l2.nsegs), resolve_range(b, 0, b.l2.nsegs)
    for k in range(min(a.l2.nsegs, b.l2.nsegs)):
        if k not in reported:
            assert a.read(k * SEG, SEG) == b.read(k * SEG, SEG), f"segment {k} differs, not reported"
        if ea[k] == eb[k]:
            assert k not in reported, f"segment {k}: one entry, reported"


def fill(k: int, byte: int) -> bytes:
    return bytes([byte]) * SEG


@pytest.fixture
def chain(pool):
    """lun <- snap2 <- snap1: snap1 sees segments 0-3 written; then the LUN changed
    1 (partial write), 3 (trimmed), 6 (new), 5 (trimmed, never written); snap2;
    then the LUN changed 2."""
    lun = pool.create_ld("lun", 8 * SEG, raid=5)
    for k in range(4):
        lun.write(k * SEG, fill(k, 0x10 + k))
    pool.snapshot("lun", "snap1")
    lun.write(SEG + 100, b"changed")
    lun.trim(3 * SEG, SEG)
    lun.write(6 * SEG, fill(6, 0x66))
    lun.trim(5 * SEG, SEG)
    pool.snapshot("lun", "snap2")
    lun.write(2 * SEG + 7, b"later")
    return pool


def test_snapshots_of_one_chain(chain):
    g = chain.get
    lun, s1, s2 = g("lun"), g("snap1"), g("snap2")
    assert segs(s2, s1) == [1, 3, 6]        # written, trimmed, new; never-written trim: no
    assert segs(s1, s2) == [1, 3, 6]        # the order of the two does not matter
    assert segs(lun, s2) == [2]
    assert segs(lun, s1) == [1, 2, 3, 6]
    assert segs(s2, s2) == []
    for a, b in [(s2, s1), (lun, s2), (lun, s1), (s1, lun)]:
        assert_safe(a, b)
    # merged and in bytes
    assert diff.diff_extents(lun, s1) == [(SEG, 3 * SEG), (6 * SEG, SEG)]


def test_without_older_the_allocated_extents(chain):
    g = chain.get
    assert diff.diff_extents(g("snap1")) == [(0, 4 * SEG)]
    assert segs(g("snap2")) == [0, 1, 2, 6]
    assert segs(g("lun")) == [0, 1, 2, 6]
    empty = chain.create_ld("empty", 4 * SEG, raid=0)
    assert diff.diff_extents(empty) == []


def test_writes_to_a_middle_snapshot_and_deletes(chain):
    """A write into snap2 (between snap1 and the LUN) makes it differ from both; a
    delete in the middle hands data over and keeps the diff of the rest right."""
    g = chain.get
    g("snap2").write(4 * SEG, b"into the middle")
    assert segs(g("snap2"), g("snap1")) == [1, 3, 4, 6]
    assert segs(g("lun"), g("snap2")) == [2, 4]
    assert segs(g("lun"), g("snap1")) == [1, 2, 3, 6]
    chain.snapshot("snap2", "snap3")        # snap1 <- snap3 <- snap2 <- lun
    chain.delete_ld("snap2")
    assert segs(g("lun"), g("snap3")) == [2, 4]
    assert segs(g("snap3"), g("snap1")) == [1, 3, 4, 6]
    assert_safe(g("lun"), g("snap3"))
    assert_safe(g("snap3"), g("snap1"))


def test_same_bytes_rewritten_is_reported(pool):
    """The diff reads no data: a segment rewritten with its own bytes has a new
    entry and is reported (a superset, never a miss)."""
    lun = pool.create_ld("lun", 2 * SEG, raid=1)
    lun.write(0, fill(0, 7))
    pool.snapshot("lun", "s")
    lun.write(0, fill(0, 7))
    assert segs(lun, pool.get("s")) == [0]


def test_deep_chain(pool):
    """More LDs than a read walks by itself; every pair checked."""
    lun = pool.create_ld("lun", 6 * SEG, raid=0)
    names = []
    for i in range(7):
        lun.write((i % 6) * SEG + i, bytes([i + 1]) * 1000)
        if i == 3:
            lun.trim(0, SEG)
        names.append(f"s{i}")
        pool.snapshot("lun", names[-1])
    lds = [pool.get(n) for n in names] + [lun]
    for a in lds:
        for b in lds:
            assert_safe(a, b)
    assert segs(pool.get("s6"), pool.get("s0")) == [0, 1, 2, 3, 4, 5]
    assert segs(pool.get("s2"), pool.get("s1")) == [2]


def test_partial_byte_ranges(chain):
    """changed_extents covers exactly the request, clipped inside segments."""
    g = chain.get
    lun, s1 = g("lun"), g("snap1")
    assert diff.changed_extents(lun, s1, 100, 10) == [(10, False)]
    assert diff.changed_extents(lun, s1, SEG - 5, 10) == [(5, False), (5, True)]
    ext = diff.changed_extents(lun, s1, 0, lun.size)
    assert ext == [(SEG, False), (3 * SEG, True), (2 * SEG, False), (SEG, True), (SEG, False)]
    assert sum(n for n, _ in ext) == lun.size


def test_different_chains_and_invalid_refused(chain):
    g = chain.get
    other = chain.create_ld("other", 8 * SEG, raid=5)
    with pytest.raises(InvalidArgument, match="not in one sharing chain"):
        diff.diff_extents(g("lun"), other)
    with pytest.raises(InvalidArgument, match="not in one sharing chain"):
        diff.Changes(chain, other, g("snap1"))


def test_snapclone_that_left_its_tree_refused(pool):
    lun = pool.create_ld("lun", 4 * SEG, raid=1)
    lun.write(0, fill(0, 3))
    pool.snapclone("lun", "clone")
    assert segs(pool.get("clone"), lun) == []      # still in the tree: it shares all
    for _ in range(100):
        if pool.bgcopy_step("clone", 8)["done"]:
            break
    clone = pool.get("clone")
    assert clone.pred is None and clone.succ is None
    with pytest.raises(InvalidArgument, match="not in one sharing chain"):
        diff.diff_extents(clone, lun)
    assert diff.diff_extents(clone) == [(0, SEG)]     # alone: its allocated extents


def test_invalid_snapshot_refused(tmp_path):
    pool, lun, snap, _ = tight_pool(tmp_path)
    with pytest.raises(InvalidArgument, match="invalid"):
        diff.diff_extents(lun, snap)
    with pytest.raises(InvalidArgument, match="invalid"):
        diff.diff_extents(snap)
    pool.close()


def test_grown_lun(tmp_path):
    """Past the smaller LD's end, segments count as changed where the larger reads
    allocated data. The pool refuses resizing an LD in a chain today, so the LUN is
    grown by the resize operation itself, as a future grow-in-chain would leave it."""
    pool, _ = make_pool(tmp_path, units=Units(quorum=8 * MiB, lmap_segments=4))
    lun = pool.create_ld("lun", 3 * SEG, raid=5)
    lun.write(0, fill(0, 1))
    s = pool.snapshot("lun", "s")
    pool.ops.execute({"t": "ldr", "id": lun.id, "size": 10 * SEG})
    for lo, hi in list(lun.l2.ranges())[1:]:      # the new space shares nothing
        lun.l2.put(lo, np.zeros(hi - lo, dtype=np.uint32))
    lun.write(2 * SEG, b"old end")
    lun.write(7 * SEG, fill(7, 9))               # in the new space, another LMAP
    assert segs(lun, s) == [2, 7]
    assert segs(s, lun) == [2]                   # over the snapshot's own size
    assert diff.changed_extents(lun, s, 6 * SEG, 4 * SEG) == [(SEG, False), (SEG, True), (2 * SEG, False)]
    assert_safe(lun, s)
    pool.close()


def test_changes_bound_to_the_lds(chain):
    """The NBD context binds the LDs: a deleted one is refused, also when a new LD
    took its name."""
    g = chain.get
    ch = diff.Changes(chain, g("lun"), g("snap2"))
    assert ch.extents(0, 4 * SEG) == [(2 * SEG, False), (SEG, True), (SEG, False)]
    chain.delete_ld("snap2")
    with pytest.raises(InvalidArgument, match="deleted"):
        ch.extents(0, SEG)
    chain.snapshot("lun", "snap2")
    with pytest.raises(InvalidArgument, match="deleted"):
        ch.extents(0, SEG)


def test_control_op(chain, monkeypatch):
    """The 'diff' control op: extents as [offset, length] and the total; a diff
    with more extents than a control reply holds is refused with the NBD way."""
    from vsand.control import handlers
    h = handlers.Handlers(chain, nbd=None, tasks=None, cfg=None)
    r = h.diff("lun", since="snap1")
    assert r == {"name": "lun", "since": "snap1", "size": 8 * SEG,
                 "extents": [[SEG, 3 * SEG], [6 * SEG, SEG]], "changed": 4 * SEG}
    assert h.diff("snap1")["extents"] == [[0, 4 * SEG]]
    monkeypatch.setattr(handlers, "MAX_DIFF_EXTENTS", 1)
    with pytest.raises(InvalidArgument, match="vsand:changed:snap1 of export lun"):
        h.diff("lun", since="snap1")
    assert h.diff("snap1")["changed"] == 4 * SEG


def test_after_a_revert_the_lun_sits_mid_chain(chain):
    """A revert puts the LUN next to the snapshot it reverted to, in the middle of
    the chain: resolved entries still give the right diff whatever the order."""
    g = chain.get
    chain.revert("lun", "snap1", keep="before")
    order = [x.name for x in chain.chain("lun")]
    assert order.index("lun") < order.index("snap2"), order     # not the newest any more
    lun, s1, s2, before = g("lun"), g("snap1"), g("snap2"), g("before")
    assert segs(lun, s1) == []                      # reads like snap1
    assert segs(lun, s2) == segs(s1, s2) == [1, 3, 6]
    assert segs(before, s2) == [2] and segs(before, lun) == [1, 2, 3, 6]
    lun.write(7 * SEG, b"after the revert")
    assert segs(lun, s1) == [7] and segs(s1, lun) == [7]
    for a in (lun, s1, s2, before):
        for b in (lun, s1, s2, before):
            assert_safe(a, b)
