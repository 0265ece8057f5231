import numpy as np
import pytest
from hypothesis import given, strategies as st

from vsand.errors import NoSpace
from vsand.physical.allocator import Allocator, DriveSpace, group_rss


@given(st.integers(1, 60))
def test_rss_grouping_sizes(n):
    groups = group_rss(list(range(n)))
    assert sorted(sum(groups, [])) == list(range(n))
    if n > 11:
        assert all(6 <= len(g) <= 11 for g in groups)
    else:
        assert len(groups) == 1


def make(sizes, ldad="default"):
    ds = [DriveSpace.new(i, s, ldad) for i, s in enumerate(sizes)]
    return Allocator(ds, {ldad: group_rss(list(range(len(sizes))))})


@pytest.mark.parametrize("raid,width", [(0, 4), (5, 5), (1, 8)])
def test_rstore_members_distinct_and_pair_rule(raid, width):
    a = make([50] * 8)
    for _ in range(40):
        placed = a.alloc_rstore("default", raid)
        drives = [d for d, _ in placed]
        assert len(placed) == width and len(set(drives)) == width
        if raid == 1:
            for (da, pa), (db, pb) in zip(placed[::2], placed[1::2]):
                assert a.partner(da) == db and pa == pb
    used = sum(int(d.used.sum()) for d in a.drives.values())
    assert used == 40 * width


def test_capacity_proportional_use():
    sizes = [100, 100, 100, 100, 200, 200, 200, 200]
    a = make(sizes)
    for _ in range(100):
        a.alloc_rstore("default", 0)
    frac = [int(d.used.sum()) / d.npsegs for d in a.drives.values()]
    assert max(frac) - min(frac) < 0.05, frac


def test_full_pool_and_too_few_drives():
    a = make([3] * 4)
    for _ in range(3):
        a.alloc_rstore("default", 0)
    with pytest.raises(NoSpace):
        a.alloc_rstore("default", 0)
    with pytest.raises(NoSpace, match="needs 5 drives"):
        make([10] * 4).alloc_rstore("default", 5)


def test_reserve_is_respected_and_pending_frees_wait():
    a = make([4] * 4)
    for d in range(4):
        a.set_reserve(d, 2)
    a.alloc_rstore("default", 0)
    placed = a.alloc_rstore("default", 0)
    with pytest.raises(NoSpace):
        a.alloc_rstore("default", 0)
    for d, p in placed:
        a.free_later(d, p)
    with pytest.raises(NoSpace):          # not reusable before the commit
        a.alloc_rstore("default", 0)
    a.release_pending()
    a.alloc_rstore("default", 0)
    assert a.alloc_meta(0, 2) and a.drives[0].free == 0   # metadata may use the reserve


def test_raid1_lockstep_skips_pairs_without_common_free_pseg():
    a = make([2] * 10)
    # make drives 0 and 1 free at different PSEG numbers only
    a.drives[0].used[0] = True; a.drives[0].free -= 1
    a.drives[1].used[1] = True; a.drives[1].free -= 1
    placed = a.alloc_rstore("default", 1)
    assert 0 not in [d for d, _ in placed]
    assert np.count_nonzero(a.drives[0].used) == 1
