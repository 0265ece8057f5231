"""What is left to rebuild, counted in bulk (disk/rebuild.py ``left_members``,
``left_by_drive``: what the status page and ``drive list`` use) against the damage
survey's own column list, on a pool with RAID0, RAID1 and RAID5 RStores, a failed
drive and a drive being removed."""

from __future__ import annotations

from collections import Counter

import pytest

from poolkit import make_pool
from vsand.disk.rebuild import left_by_drive, left_members, survey
from vsand.units import MiB


@pytest.fixture
def pool(tmp_path):
    pool, _ = make_pool(tmp_path, n=10)
    for raid in (0, 1, 5):
        pool.create_ld(f"r{raid}", 24 * MiB, raid=raid, thick=True)
    yield pool
    pool.close()


def stored(todo) -> Counter:
    return Counter((t.raid, t.members(idx)[col]) for t, idx, col in todo)


@pytest.mark.parametrize("fail,remove", [([3], []), ([], [5]), ([3], [5]), ([2, 6], [])])
def test_bulk_counts_are_the_survey_s(pool, fail, remove):
    for i in remove:
        pool.remove_drive(i)
    for i in fail:
        pool.fail_drive(i)
    damage = survey(pool)
    assert damage.todo
    bulk = Counter()
    for t, members in left_members(pool):
        assert members.ndim == 1
        bulk.update((t.raid, int(m)) for m in members.tolist())
    assert bulk == stored(damage.todo)
    assert left_by_drive(pool) == damage.by_drive(pool)
    assert set(left_by_drive(pool)) & set(fail + remove)


def test_nothing_left_on_a_whole_pool(pool):
    assert left_members(pool) == [] and left_by_drive(pool) == {}
