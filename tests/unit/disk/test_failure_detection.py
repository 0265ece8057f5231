"""Failure detection (issue 12 item 1, DESIGN.md §5): drive I/O errors are counted
per drive; past the limit, or at once when a member of a redundant stripe misses
a write, the drive is failed in memory at once and durably with the next commit;
the I/O that met the error is served from redundancy, so RAID1/5 callers see no
error; RAID0 callers get the error."""

from __future__ import annotations

import os

import pytest

from faultdrive import Faults
from vsand.disk.detector import ERROR_LIMIT
from vsand.disk.pool import Pool
from vsand.errors import IOFailure
from vsand.mapping.lmap import entry_rsd, entry_slot
from vsand.units import MiB, Units

UNITS = Units(quorum=8 * MiB)


def pool_on_faults(tmp_path):
    faults = Faults()
    paths = [os.path.join(str(tmp_path), f"d{i}.img") for i in range(8)]
    pool = Pool.create([(p, 128 * MiB, "default") for p in paths], UNITS, drive_factory=faults.open)
    return pool, paths, faults


def lun_with_data(pool, raid: int, n: int) -> tuple:
    """LD "a" of ``raid`` with ``n`` random bytes written from 0 and committed."""
    ld = pool.create_ld("a", 16 * MiB, raid=raid)
    data = bytearray(os.urandom(n))
    ld.write(0, data)
    pool.flush()
    return ld, data


def member_of(pool, ld, off):
    """(drive index, byte offset on it) of the data member that holds LD byte ``off``."""
    seg, su = pool.units.segment, pool.units.stripe_unit
    e = ld.l2.get(off // seg)
    members = pool.space.members(ld.table, entry_rsd(e))
    col = off % seg // su
    if ld.raid == 1:
        d, base = members[2 * col + ((entry_slot(e) + col) & 1)]
    else:
        from vsand.redundancy.geometry import data_members
        d, base = members[data_members(ld.raid, entry_slot(e), col)[0]]
    return d, base + entry_slot(e) * su + off % su


def reopen(pool, paths):
    pool.close()
    return Pool.open(paths)


@pytest.mark.parametrize("raid", [1, 5])
def test_read_errors_are_served_from_redundancy_and_fail_the_drive_at_the_limit(tmp_path, raid):
    pool, paths, faults = pool_on_faults(tmp_path)
    ld, data = lun_with_data(pool, raid, 4 * MiB)
    d, at = member_of(pool, ld, 8192)
    path = pool.drives[d].path
    for i in range(ERROR_LIMIT):
        faults.add("pread", path, (at, at + 4096))
        assert ld.read(8192, 4096) == data[8192:12288]        # no error seen
        assert pool.detector.errors[d] == i + 1
        assert pool.drives[d].failed == (i + 1 == ERROR_LIMIT)
    assert d in pool.failed_drives and "I/O errors" in pool.failed_drives[d]
    assert ld.read(0, 4 * MiB) == data                        # degraded, whole
    pool.flush()                                              # the dfail record goes with it
    pool = reopen(pool, paths)
    assert pool.drives[d].failed and "I/O errors" in pool.failed_drives[d]
    assert pool.get("a").read(0, 4 * MiB) == data
    pool.close()


@pytest.mark.parametrize("raid", [1, 5])
def test_a_member_that_misses_a_write_is_failed_at_once_and_the_write_holds(tmp_path, raid):
    pool, paths, faults = pool_on_faults(tmp_path)
    ld, data = lun_with_data(pool, raid, 4 * MiB)
    d, at = member_of(pool, ld, MiB + 4096)
    faults.add("pwrite", pool.drives[d].path, (at, at + 4096))
    new = os.urandom(4096)
    ld.write(MiB + 4096, new)                                 # no error seen
    data[MiB + 4096:MiB + 8192] = new
    assert pool.drives[d].failed and "missed a write" in pool.failed_drives[d]
    assert ld.read(0, 4 * MiB) == data
    pool.flush()
    pool = reopen(pool, paths)
    assert pool.drives[d].failed
    assert pool.get("a").read(0, 4 * MiB) == data
    pool.close()


def test_a_raid5_read_modify_write_whose_old_data_cannot_be_read_fails_the_drive(tmp_path):
    pool, paths, faults = pool_on_faults(tmp_path)
    ld, data = lun_with_data(pool, 5, 2 * MiB)
    d, at = member_of(pool, ld, 12288)
    faults.add("pread", pool.drives[d].path, (at, at + 4096))
    new = os.urandom(4096)
    ld.write(12288, new)
    data[12288:16384] = new
    assert pool.drives[d].failed
    assert ld.read(0, 2 * MiB) == data
    pool.flush()
    pool = reopen(pool, paths)
    assert pool.get("a").read(0, 2 * MiB) == data
    pool.close()


def test_raid0_errors_reach_the_caller_and_count(tmp_path):
    pool, paths, faults = pool_on_faults(tmp_path)
    ld, _ = lun_with_data(pool, 0, MiB)
    d, at = member_of(pool, ld, 0)
    faults.add("pread", pool.drives[d].path, (at, at + 4096))
    with pytest.raises(IOFailure):
        ld.read(0, 4096)
    faults.add("pwrite", pool.drives[d].path, (at, at + 4096))
    with pytest.raises(IOFailure):
        ld.write(0, bytes(4096))
    assert pool.detector.errors[d] == 2 and not pool.drives[d].failed
    pool.close()


def test_a_second_failure_in_a_raid5_stripe_is_an_error_not_wrong_data(tmp_path):
    pool, paths, faults = pool_on_faults(tmp_path)
    ld, _ = lun_with_data(pool, 5, MiB)
    d1, _ = member_of(pool, ld, 0)
    pool.fail_drive(d1)
    d2, at = member_of(pool, ld, pool.units.stripe_unit)
    faults.add("pread", pool.drives[d2].path, (at, at + 4096))
    with pytest.raises(IOFailure):
        ld.read(0, 4096)                  # column 0 needs column 1, which fails
    pool.close()


def test_a_drive_image_truncated_under_the_pool_reads_as_errors_not_zeros(tmp_path):
    """Past the size a drive had when opened a read gives zeros (a short image's
    end); before it, a read that ends early means the image shrank: an I/O error,
    served from redundancy and counted, never zeros in place of data."""
    pool, paths, _ = pool_on_faults(tmp_path)
    ld, data = lun_with_data(pool, 5, 4 * MiB)
    d, at = member_of(pool, ld, 0)
    os.truncate(pool.drives[d].path, at)
    for _ in range(ERROR_LIMIT):
        assert ld.read(0, 4 * MiB) == data
    assert pool.drives[d].failed and "truncated" in pool.failed_drives[d]
    pool.close()
