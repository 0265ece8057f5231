"""Drives added to a running pool (issue 12 item 3, `drive add`): the label, then a
checkpoint whose superblock lists the drive; RSS membership by the 6-11 rule;
capacity usable at once; found again at the next open even when its path is not
among those given; a crash between label and checkpoint leaves a drive the pool
ignores and that can be added again."""

from __future__ import annotations

import os

import pytest

from poolkit import make_pool
from vsand.disk.check import check_pool
from vsand.disk.pool import Pool
from vsand.errors import InvalidArgument, NoSpace, NotFound
from vsand.units import MiB


def test_an_added_drive_takes_new_data_and_survives_a_reopen(tmp_path):
    pool, paths = make_pool(tmp_path, n=6)
    free = pool.allocator.free_psegs()
    new = str(tmp_path / "new.img")
    rec = pool.add_drive(new, 128 * MiB)
    assert rec["i"] == 6 and pool.allocator.rss["default"] == [[0, 1, 2, 3, 4, 5, 6]]
    assert pool.allocator.usable(pool.allocator.drives[6]) == rec["npsegs"]   # all of it, at once
    assert pool.allocator.free_psegs() > free
    ld = pool.create_ld("a", 64 * MiB, raid=5)
    data = os.urandom(64 * MiB)
    ld.write(0, data)
    pool.flush()
    used = {d for t in pool.space.tables.values() for i in t.live_indices().tolist()
            for d, _ in pool.space.physical(t.raid, t.members(i))}
    assert 6 in used                             # the emptiest drive is chosen first
    assert check_pool(pool) == []
    for d in pool.drives.values():               # kill -9
        d.close()
    pool.closed = True
    pool = Pool.open(paths)                      # its path is not among these
    assert 6 in pool.drives and not pool.drives[6].failed
    assert pool.get("a").read(0, len(data)) == data
    assert check_pool(pool) == []
    pool.close()


def test_the_twelfth_drive_starts_an_rss_and_pairs_stay(tmp_path):
    pool, paths = make_pool(tmp_path, n=11, size=64 * MiB)
    partners = {d: pool.allocator.partner(d) for d in range(10)}
    rec = pool.add_drive(str(tmp_path / "x.img"), 64 * MiB)
    assert pool.allocator.rss["default"] == [list(range(11)), [11]]
    assert {d: pool.allocator.partner(d) for d in range(10)} == partners
    with pytest.raises(InvalidArgument):
        pool.allocator.partner(rec["i"])
    pool.close()


def test_refusals(tmp_path):
    pool, paths = make_pool(tmp_path, n=6)
    with pytest.raises(InvalidArgument, match="already"):
        pool.add_drive(paths[2])
    with pytest.raises(InvalidArgument, match="does not exist"):
        pool.add_drive(str(tmp_path / "none.img"))
    with pytest.raises(InvalidArgument, match="no LDAD"):
        pool.add_drive(str(tmp_path / "n.img"), 64 * MiB, ldad="fast")
    other, other_paths = make_pool(tmp_path / "other", n=4)
    other.close()
    with pytest.raises(InvalidArgument, match="another vsand pool"):
        pool.add_drive(other_paths[0])
    assert sorted(pool.drives) == list(range(6))
    pool.close()


def test_a_crash_between_label_and_checkpoint_leaves_a_drive_to_add_again(tmp_path, monkeypatch):
    pool, paths = make_pool(tmp_path, n=6)
    new = str(tmp_path / "new.img")
    import vsand.disk.membership as membership

    def die(name):
        if name == "drive_add.after_label":
            raise SystemExit("kill -9")
    monkeypatch.setattr(membership, "crashpoint", die)
    with pytest.raises(SystemExit):
        pool.add_drive(new, 128 * MiB)
    for d in pool.drives.values():
        d.close()
    pool.closed = True
    monkeypatch.undo()
    pool = Pool.open(paths + [new])
    assert 6 not in pool.drives and any(new in s for s in pool.strangers), pool.strangers
    rec = pool.add_drive(new)                    # its label names this pool: formatted again
    assert rec["i"] == 6 and not pool.drives[6].failed
    pool.close()
    pool = Pool.open(paths)
    assert 6 in pool.drives and not pool.drives[6].failed and pool.strangers == []
    pool.close()


def _run_moves(pool):
    while (r := pool.rebuild_step(8)) is not None:
        assert not r["failed"] and not r["skipped"], r
        pool.flush()
    return pool.finish_removals()


@pytest.mark.parametrize("crash", [False, True])
def test_a_removed_drive_is_emptied_then_let_go(tmp_path, crash):
    pool, paths = make_pool(tmp_path, n=10)
    want = {}
    for raid in (0, 1, 5):
        ld = pool.create_ld(f"r{raid}", 16 * MiB, raid=raid)
        want[ld.name] = os.urandom(16 * MiB)
        ld.write(0, want[ld.name])
    pool.flush()
    victim = 7
    held = pool.remove_drive(victim)
    assert held > 0 and pool.allocator.usable(pool.allocator.drives[victim]) == 0
    assert pool.status()["drives"][victim]["state"] == "leaving"
    if crash:
        r = pool.rebuild_step(2)               # some moved, not committed: kill -9
        assert r["copied"]
        for d in pool.drives.values():
            d.close()
        pool.closed = True
    else:
        pool.close()                           # a clean restart (from a checkpoint)
    pool = Pool.open(paths)
    assert pool.drive_recs[victim].get("leaving")     # the removal was durable
    assert pool.allocator.usable(pool.allocator.drives[victim]) == 0
    assert _run_moves(pool) == [victim]
    for t in pool.space.tables.values():
        for i in t.live_indices().tolist():
            assert victim not in [d for d, _ in pool.space.physical(t.raid, t.members(i))]
    assert pool.status()["drives"][victim]["state"] == "removed"
    for name, data in want.items():
        assert pool.get(name).read(0, len(data)) == data, name
    assert check_pool(pool) == []
    pool.close()
    pool = Pool.open(paths)                      # the image is still there, its label wiped
    assert pool.strangers == [] and pool.failed_drives == {} and pool.drives[victim].failed
    for name, data in want.items():
        assert pool.get(name).read(0, len(data)) == data, name
    pool.close()
    os.unlink(paths[victim])                     # and once it is gone, nothing misses it
    pool = Pool.open([p for i, p in enumerate(paths) if i != victim])
    assert pool.failed_drives == {} and pool.status()["state"] == "ok"
    pool.close()


def test_removal_refusals(tmp_path):
    pool, paths = make_pool(tmp_path, n=6, size=64 * MiB)
    with pytest.raises(NotFound):
        pool.remove_drive(42)
    ld = pool.create_ld("a", 512 * MiB, raid=0)
    try:                                         # fill the pool
        for k in range(512):
            ld.write(k * MiB, b"\x01" * MiB)
    except NoSpace:
        pass
    pool.flush()
    with pytest.raises(NoSpace, match=r"the other drives of drive 5's RSS have \d+ (MiB|KiB|B) free; "
                                      r"it holds \d+ MiB: add a drive first"):
        pool.remove_drive(5)
    pool.delete_ld("a")
    assert pool.remove_drive(5) == 0
    with pytest.raises(InvalidArgument, match="being removed"):
        pool.remove_drive(5)
    assert pool.finish_removals() == [5]
    with pytest.raises(InvalidArgument, match="removed already"):
        pool.remove_drive(5)
    pool.close()


def _kill(pool):
    for d in pool.drives.values():
        d.close()
    pool.closed = True


def _pool_with_data(tmp_path):
    pool, paths = make_pool(tmp_path, n=7)
    want = {}
    for raid in (0, 5):
        ld = pool.create_ld(f"r{raid}", 16 * MiB, raid=raid)
        want[ld.name] = os.urandom(16 * MiB)
        ld.write(0, want[ld.name])
    pool.flush()
    return pool, paths, want


def _reads(pool, want):
    for name, data in want.items():
        assert pool.get(name).read(0, len(data)) == data, name
    assert check_pool(pool) == []


def test_a_metadata_drive_hands_its_copy_over_before_it_leaves(tmp_path):
    pool, paths, want = _pool_with_data(tmp_path)
    before = list(pool.quorum_ids)
    assert 0 in before
    pool.remove_drive(0)
    q = pool.quorum_ids
    assert 0 not in q and len(set(q)) == len(before) and set(before) - {0} < set(q)
    assert pool.allocator.drives[0].reserve == 0
    while pool.rebuild_step(8) is not None:
        pool.flush()
    assert pool.finish_removals() == [0]
    _reads(pool, want)
    pool.close()
    os.unlink(paths[0])                          # the drive is gone for good
    pool = Pool.open(paths[1:])
    assert pool.quorum_ids == q and pool.status()["state"] == "ok"
    _reads(pool, want)
    pool.close()


@pytest.mark.parametrize("point", ["checkpoint.before_superblock", "superblock.after_first_copy",
                                   "checkpoint.after_superblock"])
def test_a_crash_inside_the_metadata_move_leaves_one_whole_quorum(tmp_path, monkeypatch, point):
    pool, paths, want = _pool_with_data(tmp_path)
    before = list(pool.quorum_ids)
    import vsand.disk.transactions as transactions
    import vsand.meta.store as store

    def die(name):
        if name == point:
            raise SystemExit("kill -9")
    monkeypatch.setattr(transactions, "crashpoint", die)
    monkeypatch.setattr(store, "crashpoint", die)
    with pytest.raises(SystemExit):
        pool.remove_drive(0)
    _kill(pool)
    monkeypatch.undo()
    pool = Pool.open(paths)
    # the new superblock on one drive of the new quorum (the blobs are on all of it) wins
    moved = point != "checkpoint.before_superblock"
    assert (0 not in pool.quorum_ids) if moved else (pool.quorum_ids == before), pool.quorum_ids
    assert not pool.drive_recs[0].get("leaving")        # the removal itself did not happen
    _reads(pool, want)
    pool.remove_drive(0)                                 # and can be asked again
    while pool.rebuild_step(8) is not None:
        pass
    assert pool.finish_removals() == [0] and 0 not in pool.quorum_ids
    pool.close()
    pool = Pool.open(paths[1:])
    _reads(pool, want)
    pool.close()


def test_a_failed_metadata_drive_hands_its_copy_over(tmp_path):
    pool, paths, want = _pool_with_data(tmp_path)
    pool.fail_drive(1)
    assert 1 in pool.quorum_ids
    while pool.rebuild_step(8) is not None:
        pool.flush()
    assert pool.restore_quorum() != [] and 1 not in pool.quorum_ids
    assert all(not pool.drives[i].failed for i in pool.quorum_ids)
    pool.close()
    pool = Pool.open(paths)
    assert 1 not in pool.quorum_ids
    _reads(pool, {"r5": want["r5"]})                     # RAID0 on drive 1 went with it
    pool.close()


def test_a_metadata_move_whose_superblock_write_fails_loses_nothing(tmp_path):
    """The new superblock reaches the old quorum drives, then the incoming drive
    fails its write: the old quorum is written again at a newer generation, so the
    commits that follow (a flushed write, a LUN created) survive a kill -9."""
    from vsand.errors import IOFailure
    from vsand.meta import format as fmt
    pool, paths = make_pool(tmp_path, n=8)
    ld = pool.create_ld("a", 16 * MiB, raid=5)
    ld.write(0, b"A" * MiB)
    pool.flush()
    before = list(pool.quorum_ids)
    alloc = pool.allocator
    new = max((i for i in alloc.drives if i not in before), key=lambda i: alloc.usable(alloc.drives[i]))
    d = pool.drives[new]
    real = d.pwrite

    def pwrite(off, data):
        if off in fmt.SB_SLOT_OFF:
            raise IOFailure(f"drive {new}: EIO (superblock)")
        return real(off, data)
    d.pwrite = pwrite
    with pytest.raises(IOFailure):
        pool.remove_drive(before[-1])
    d.pwrite = real
    assert pool.quorum_ids == before and not pool.drive_recs[before[-1]].get("leaving")
    ld.write(0, b"B" * MiB)
    pool.flush()
    pool.create_ld("b", 8 * MiB, raid=5)
    _kill(pool)
    pool = Pool.open(paths)
    assert pool.get("a").read(0, 4) == b"BBBB" and sorted(pool.lds) == ["a", "b"]
    assert check_pool(pool) == []
    pool.close()
