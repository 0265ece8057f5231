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
from vsand.errors import InvalidArgument
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
