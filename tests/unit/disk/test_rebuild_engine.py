"""Rebuild (issue 12 item 2, DESIGN.md §5): every redundant RStore with a member on a
failed drive gets a new PSEG on a working drive of its RSS, filled from the other
members; the RSD member is switched in a transaction. Checked byte for byte
against what was written, with the placement rules, across crashes, with writes
during the copy, and when there is no room."""

from __future__ import annotations

import os

import pytest

from poolkit import make_pool
from vsand.disk.check import check_pool
from vsand.disk.pool import Pool
from vsand.errors import IOFailure
from vsand.mapping.lmap import entry_rsd
from vsand.mapping.rsd import unpack_member
from vsand.units import MiB

# RAID5 needs a sixth drive to have somewhere to rebuild to, RAID1 a fifth pair
DRIVES = {5: 6, 1: 10}


def setup(tmp_path, raid: int, size: int = 48 * MiB, n: int | None = None):
    pool, paths = make_pool(tmp_path, n=n or DRIVES[raid])
    ld = pool.create_ld("a", size, raid=raid)
    data = bytearray(os.urandom(size))
    ld.write(0, data)
    pool.flush()
    return pool, paths, ld, data


def victim(pool, ld) -> int:
    """A drive holding a member of ``ld``'s first RStore, not a quorum drive."""
    rows = ld.table.members(0)
    ds = [d for d, _ in pool.space.physical(ld.raid, rows)]
    return next(d for d in ds if d not in pool.quorum_ids)


def placement_ok(pool) -> None:
    """Distinct drives per RStore, one RSS, RAID1 copies on a pair, nothing on a failed drive."""
    for t in pool.space.tables.values():
        for idx in t.live_indices().tolist():
            ds = [d for d, _ in pool.space.physical(t.raid, t.members(idx))]
            assert len(set(ds)) == len(ds), (t.raid, idx, ds)
            assert any(set(ds) <= set(g) for g in pool.allocator.rss[t.ldad]), ds
            if t.raid == 1:
                for c in range(4):
                    assert ds[2 * c + 1] == pool.allocator.partner(ds[2 * c])


def rebuild_all(pool, budget: int = 3) -> int:
    steps = 0
    while True:
        r = pool.rebuild_step(budget)
        if r is None:
            return steps
        assert not r["failed"], r["failed"]
        steps += 1
        pool.flush()


@pytest.mark.parametrize("raid", [1, 5])
def test_rebuild_moves_every_damaged_member_and_the_data_reads_back(tmp_path, raid):
    pool, paths, ld, data = setup(tmp_path, raid)
    d = victim(pool, ld)
    before = len(pool.damage().todo)
    pool.fail_drive(d)
    dmg = pool.damage()
    assert dmg.todo and dmg.lost == 0 and before == 0
    assert rebuild_all(pool) >= 1
    assert pool.damage().todo == []
    for t in pool.space.tables.values():
        for idx in t.live_indices().tolist():
            assert d not in [x for x, _ in pool.space.physical(t.raid, t.members(idx))]
    placement_ok(pool)
    assert ld.read(0, len(data)) == data
    assert check_pool(pool) == []
    # nothing depends on the failed drive any more: the data survives a second failure
    other = next(x for x in sorted(pool.drives) if x != d and x not in pool.quorum_ids
                 and not pool.drives[x].failed)
    pool.fail_drive(other)
    assert pool.damage().lost == 0
    assert ld.read(0, len(data)) == data
    pool.close()
    pool = Pool.open(paths)
    assert pool.get("a").read(0, len(data)) == data
    pool.close()


def test_writes_during_the_copy_reach_the_new_member(tmp_path):
    pool, paths, ld, data = setup(tmp_path, 5)
    d = victim(pool, ld)
    pool.fail_drive(d)
    p = pool.rebuild_plan(64, set())
    assert p is not None and p.moves
    p.io()
    # a client writes after the copy read the members, before the switch
    patch = os.urandom(300 * 1024)
    ld.write(5 * MiB + 4096, patch)
    data[5 * MiB + 4096:5 * MiB + 4096 + len(patch)] = patch
    r = p.finish()
    assert r["copied"] == len(p.moves)
    pool.flush()
    rebuild_all(pool)
    assert pool.damage().todo == []
    assert ld.read(0, len(data)) == data
    assert check_pool(pool, parity=True) == []
    # with another member of the patched RStore gone, the new member must give it back
    t = ld.table
    idx = entry_rsd(ld.l2.get(5))
    ds = [x for x, _ in pool.space.physical(5, t.members(idx))]
    new = [m.new[0] for m in p.moves if m.idx == idx]
    other = next(x for x in ds if x not in new)
    pool.mark_failed(other, "test")
    assert ld.read(0, len(data)) == data
    pool.close()
    pool = Pool.open(paths)
    assert pool.get("a").read(0, len(data)) == data
    pool.close()


def test_a_crash_before_the_switch_commits_leaves_the_rstore_degraded_and_whole(tmp_path):
    pool, paths, ld, data = setup(tmp_path, 5)
    d = victim(pool, ld)
    pool.fail_drive(d)
    r = pool.rebuild_step(64)
    assert r["copied"] >= 1
    for x in pool.drives.values():       # kill -9 before the commit
        x.close()
    pool.closed = True
    pool = Pool.open(paths)
    assert pool.damage().todo, "the switch was not committed: still damaged"
    ld = pool.get("a")
    assert ld.read(0, len(data)) == data
    rebuild_all(pool)
    assert pool.damage().todo == []
    assert ld.read(0, len(data)) == data
    assert check_pool(pool) == []
    pool.close()


def test_a_changed_rstore_discards_the_copy_and_frees_its_pseg(tmp_path):
    pool, paths, ld, data = setup(tmp_path, 5, size=8 * MiB)
    d = victim(pool, ld)
    pool.fail_drive(d)
    free = pool.allocator.free_psegs()
    p = pool.rebuild_plan(64, set())
    assert pool.allocator.free_psegs() == free - len(p.moves)
    p.io()
    pool.delete_ld("a")             # the RStore goes away under the copy
    r = p.finish()
    assert r["copied"] == 0
    pool.flush()
    assert pool.rebuild_step(64) is None
    assert check_pool(pool) == []
    pool.close()


def test_no_room_to_rebuild_is_reported_and_the_pool_runs_degraded(tmp_path):
    # five drives: a RAID5 RStore uses all of them, so a failed one has nowhere to go
    pool, paths, ld, data = setup(tmp_path, 5, n=5)
    d = victim(pool, ld)
    pool.fail_drive(d)
    r = pool.rebuild_step(64)
    assert r["copied"] == 0 and r["skipped"] and r["remaining"] == 0
    assert ld.read(0, len(data)) == data
    pool.close()


def test_two_failures_in_one_raid5_rstore_are_lost_not_rebuilt(tmp_path):
    pool, paths, ld, data = setup(tmp_path, 5, size=8 * MiB)
    ds = [x for x, _ in pool.space.physical(5, ld.table.members(0))]
    for x in ds[:2]:
        pool.mark_failed(x, "test")
    dmg = pool.damage()
    assert dmg.lost == 1 and not any(idx == 0 for _, idx, _ in dmg.todo)
    pool.close()


def test_raid1_column_moves_as_a_pair(tmp_path):
    pool, paths, ld, data = setup(tmp_path, 1, size=8 * MiB)
    rows = ld.table.members(0)
    d, g = unpack_member(rows[0])
    pool.fail_drive(pool.allocator.partner(d))     # the partner's copy dies
    rebuild_all(pool)
    nd, ng = unpack_member(ld.table.members(0)[0])
    assert nd not in (d, pool.allocator.partner(d))
    placement_ok(pool)
    assert ld.read(0, len(data)) == data
    pool.close()


def test_two_columns_of_one_raid1_rstore_in_one_step_share_what_was_written(tmp_path):
    """Two failed drives in different pairs of one RAID1 RStore: both columns move in
    one step. The first move's copy fails (a transient EIO on its target), a client
    writes the second column during the copy: the second move must copy that stripe
    again, not lose it to the first move's discarded watch (found in review)."""
    pool, paths = make_pool(tmp_path, n=11)
    ld = pool.create_ld("a", 8 * MiB, raid=1)
    data = bytearray(os.urandom(8 * MiB))
    ld.write(0, data)
    pool.flush()
    t = ld.table
    drives = [unpack_member(m)[0] for m in t.members(0)]
    cand = [pool.allocator.partner(d) for d in drives]
    cand = [d for d in cand if d not in pool.quorum_ids] + [d for d in cand if d in pool.quorum_ids]
    pool.fail_drive(cand[0])
    pool.fail_drive(cand[1])
    p = pool.rebuild_plan(8, set())
    mv = [m for m in p.moves if m.idx == 0]
    assert len(mv) == 2
    td, toff = mv[0].targets[0]
    drive = pool.drives[td]
    real = drive.pwrite
    hit = []

    def flaky(off, buf):
        if not hit and off == toff:
            hit.append(off)
            raise IOFailure("a transient EIO")
        return real(off, buf)
    drive.pwrite = flaky
    p.io()
    drive.pwrite = real
    assert hit and mv[0].error is not None
    off = mv[1].col * pool.units.stripe_unit + 4096          # segment 0, the second move's column
    patch = os.urandom(8192)
    ld.write(off, patch)
    data[off:off + len(patch)] = patch
    r = p.finish()
    assert r["copied"] == 1 and len(r["failed"]) == 1
    pool.flush()
    for m in mv:             # a switched column must now be read from its new pair alone
        if t.members(0)[m.col] != m.stored[m.col]:
            for d, _ in m.sources:
                if not pool.drives[d].failed:
                    pool.mark_failed(d, "test")
    assert ld.read(0, len(data)) == data
    pool.close()
