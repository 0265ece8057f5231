"""Typed operations and their replay (DESIGN.md §9): ``switch_member`` — what rebuild
and leveling will use to move data — changes an RSD member, frees the old PSEG
only once committed, and replays from the log and from a checkpoint alike."""

from __future__ import annotations

import os

import pytest

from poolkit import make_pool
from vsand.disk.check import check_paths, check_pool
from vsand.disk.ops import REPLAY
from vsand.disk.pool import Pool
from vsand.mapping.lmap import entry_rsd
from vsand.mapping.rsd import pack_member, unpack_member
from vsand.units import MiB


def moved_member(pool, ld):
    """Copies one member PSEG of ``ld``'s first RStore to a free PSEG on a drive the
    RStore does not use; returns (table, RSD index, column, new member, old member)."""
    t = ld.table
    idx = entry_rsd(ld.l2.get(0))
    stored = t.members(idx)
    used = {d for d, _ in pool.space.physical(t.raid, stored)}
    target = next(i for i in sorted(pool.allocator.drives) if i not in used)
    g = pool.allocator.drives[target].take()
    col = 1
    d, old_g = unpack_member(stored[col])
    u = pool.units
    data = pool.drives[d].pread(u.quorum + old_g * u.pseg, u.pseg)
    pool.drives[target].pwrite(u.quorum + g * u.pseg, data)
    return t, idx, col, pack_member(target, g), stored[col]


@pytest.mark.parametrize("raid", [0, 5])
def test_switch_member_moves_data_and_replays(tmp_path, raid):
    pool, paths = make_pool(tmp_path)
    ld = pool.create_ld("a", 8 * MiB, raid=raid)
    data = os.urandom(8 * MiB)
    ld.write(0, data)
    pool.flush()
    t, idx, col, new, old = moved_member(pool, ld)
    od, og = unpack_member(old)
    pool.ops.switch_member(t, idx, col, new)
    assert t.members(idx)[col] == new
    assert pool.allocator.drives[od].used[og], "the old PSEG is reused before the switch commits"
    assert ld.read(0, 8 * MiB) == data
    pool.flush()
    assert not pool.allocator.drives[od].used[og], "the old PSEG did not come back"
    assert check_pool(pool) == []
    # the log replays it ...
    for d in pool.drives.values():
        d.close()
    pool.closed = True
    pool = Pool.open(paths)
    assert pool.space.table(raid, "default").members(idx)[col] == new
    assert pool.get("a").read(0, 8 * MiB) == data
    # ... and so does a checkpoint
    pool.close()
    assert check_paths(paths, parity=True) == []
    pool = Pool.open(paths)
    assert pool.space.table(raid, "default").members(idx)[col] == new
    assert pool.get("a").read(0, 8 * MiB) == data
    pool.close()


def test_switch_member_not_committed_is_not_there_after_a_crash(tmp_path):
    pool, paths = make_pool(tmp_path)
    ld = pool.create_ld("a", 8 * MiB, raid=5)
    data = os.urandom(8 * MiB)
    ld.write(0, data)
    pool.flush()
    t, idx, col, new, old = moved_member(pool, ld)
    pool.ops.switch_member(t, idx, col, new)
    for d in pool.drives.values():       # kill -9 before the commit
        d.close()
    pool.closed = True
    pool = Pool.open(paths)
    assert pool.space.table(5, "default").members(idx)[col] == old
    assert pool.get("a").read(0, 8 * MiB) == data
    assert check_pool(pool) == []
    pool.close()


def test_every_record_kind_has_an_apply_function():
    written = {"ldc", "ldd", "ldn", "ldr", "lda", "snap", "cdet", "inv", "rvt", "set", "dfail", "dleave", "dgone",
               "rsa", "rsr", "rsm", "map", "lmap", "r5d", "r5c", "task"}
    assert set(REPLAY) == written


@pytest.mark.parametrize("checkpoint", [False, True], ids=["log", "checkpoint"])
def test_rename_is_replayed_with_what_names_the_ld(tmp_path, checkpoint):
    """``ldn``: the new name, the origin attributes of other LDs and the stored task
    records that name it all come back from the log (kill -9 after the call) or a
    checkpoint; a delete records the origin as gone."""
    pool, paths = make_pool(tmp_path)
    ld = pool.create_ld("a", 8 * MiB, raid=5)
    data = os.urandom(MiB)
    ld.write(0, data)
    pool.snapshot("a", "s")
    pool.snapclone("a", "c")
    pool.save_task({"id": 1, "kind": "bgcopy", "target": "a", "state": "running"})
    pool.save_task({"id": 2, "kind": "bgcopy", "target": "other", "state": "running"})
    pool.rename_ld("a", "b")
    if checkpoint:
        pool.checkpoint()
    for d in pool.drives.values():       # kill -9
        d.close()
    pool.closed = True
    pool = Pool.open(paths)
    assert sorted(pool.lds) == ["b", "c", "s"]
    assert pool.get("s").attrs["snapshot_of"] == "b" and pool.get("c").attrs["snapclone_of"] == "b"
    assert pool.tasks[1]["target"] == "b" and pool.tasks[2]["target"] == "other"
    assert pool.get("b").read(0, MiB) == data and pool.get("s").read(0, MiB) == data
    assert [x.name for x in pool.chain("b")] == ["s", "c", "b"]
    pool.delete_ld("b")
    pool.close()
    pool = Pool.open(paths)
    for name, key in (("s", "snapshot_of"), ("c", "snapclone_of")):
        assert key not in pool.get(name).attrs and pool.get(name).attrs["origin_deleted"] == "b"
    assert pool.get("s").read(0, MiB) == data
    assert check_pool(pool) == []
    pool.close()
