"""Scrub (issue 12 item 5): every allocated RAID1/RAID5 stripe is read and checked;
a member that cannot be read is written again from redundancy (the error counts
against its drive), RAID5 parity that disagrees is recomputed from the data, a
RAID1 second copy that differs takes the first copy's bytes. Damage is made by
writing the drive images behind the pool's back."""

from __future__ import annotations

import os

import pytest

from faultdrive import Faults
from vsand.disk.check import check_pool
from vsand.disk.pool import Pool
from vsand.mapping.lmap import entry_rsd, entry_slot
from vsand.redundancy.geometry import parity_member
from vsand.units import MiB, Units

UNITS = Units(quorum=8 * MiB)


def setup(tmp_path, raid, faults=None):
    paths = [os.path.join(str(tmp_path), f"d{i}.img") for i in range(8)]
    kw = {"drive_factory": faults.open} if faults else {}
    pool = Pool.create([(p, 128 * MiB, "default") for p in paths], UNITS, **kw)
    ld = pool.create_ld("a", 8 * MiB, raid=raid)
    data = os.urandom(8 * MiB)
    ld.write(0, data)
    pool.flush()
    return pool, ld, data


def scrub_all(pool, budget: int = 5):
    cur = pool.scrub_cursor()
    for _ in range(1000):
        if pool.scrub_step(cur, budget)["done"]:
            return cur
    raise AssertionError("the scrub never ended")


def member(pool, ld, k: int, i: int) -> tuple:
    """(drive object, byte offset) of member ``i`` of segment k's stripe."""
    e = ld.l2.get(k)
    d, base = pool.space.members(ld.table, entry_rsd(e))[i]
    return pool.drives[d], base + entry_slot(e) * pool.units.stripe_unit


def test_a_clean_pool_scrubs_clean_and_counts_every_allocated_stripe(tmp_path):
    pool, ld, data = setup(tmp_path, 5)
    b = pool.create_ld("b", 8 * MiB, raid=1)
    b.write(0, os.urandom(3 * MiB))              # 3 of an RStore's 8 slots in use
    assert pool.scrub_cursor().total == 11
    cur = scrub_all(pool, budget=2)
    assert cur.checked == 11 and cur.repaired == []
    pool.close()


@pytest.mark.parametrize("which", ["parity", "data"])
def test_raid5_parity_that_disagrees_is_recomputed(tmp_path, which):
    pool, ld, data = setup(tmp_path, 5)
    e = ld.l2.get(3)
    p = parity_member(entry_slot(e))
    drive, off = member(pool, ld, 3, p if which == "parity" else (p + 1) % 5)
    drive.pwrite(off + 1000, b"\xff" * 16)
    assert check_pool(pool, parity=True) != []
    cur = scrub_all(pool)
    assert len(cur.repaired) == 1 and "parity recomputed" in cur.repaired[0], cur.repaired
    assert check_pool(pool, parity=True) == []
    if which == "parity":
        assert ld.read(0, 8 * MiB) == data
    pool.close()


def test_raid1_copies_that_differ_are_made_equal(tmp_path):
    pool, ld, data = setup(tmp_path, 1)
    drive, off = member(pool, ld, 2, 3)           # column 1's second copy
    drive.pwrite(off + 5, b"\x00\x01\x02")
    cur = scrub_all(pool)
    assert cur.repaired and "column 1: copy 1 differed" in cur.repaired[0], cur.repaired
    assert check_pool(pool, parity=True) == []
    assert ld.read(0, 8 * MiB) == data
    pool.close()


@pytest.mark.parametrize("raid", [1, 5])
def test_an_unreadable_member_is_rewritten_from_redundancy_and_the_error_counts(tmp_path, raid):
    faults = Faults()
    pool, ld, data = setup(tmp_path, raid, faults)
    drive, off = member(pool, ld, 4, 0)
    index = next(i for i, d in pool.drives.items() if d is drive)
    faults.add("pread", drive.path, (off, off + 4096))          # the next read there fails
    cur = scrub_all(pool)
    assert any("rewritten after a read error" in r for r in cur.repaired), cur.repaired
    assert pool.detector.errors[index] == 1 and not drive.failed
    assert check_pool(pool, parity=True) == []
    assert ld.read(0, 8 * MiB) == data
    pool.close()


def test_a_stripe_on_a_failed_drive_is_left_to_the_rebuild(tmp_path):
    pool, ld, data = setup(tmp_path, 5)
    drive, _ = member(pool, ld, 0, 0)
    pool.fail_drive(next(i for i, d in pool.drives.items() if d is drive))
    cur = scrub_all(pool)
    assert cur.repaired == []
    assert ld.read(0, 8 * MiB) == data
    pool.close()
