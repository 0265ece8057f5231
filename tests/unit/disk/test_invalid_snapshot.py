"""Invalid snapshots are consistently invalid (issue 10 finding 5).

An on-demand snapshot whose copy on first write finds no space is invalidated. From
then on every way of reading or writing it fails with EIO — plain and structured
reads (holes included: a hole must not read as zeros), block status, writes, trims,
zeroing — at every offset; trims and deletes never hand space to it (it holds
nothing and leaves its chain); free space is never negative and ``lun list``
shows the state.
"""

from __future__ import annotations

import errno

import pytest

from poolkit import make_pool
from vsand.disk.check import check_pool
from vsand.errors import InvalidArgument, IOFailure, VsanError
from vsand.units import MiB

SEG = MiB


def tight_pool(tmp_path):
    """A LUN with a snapshot in a pool with no free space left, and the LUN write
    that invalidates the snapshot done."""
    pool, paths = make_pool(tmp_path, size=8 * MiB + 10 * 2 * MiB)
    lun = pool.create_ld("lun", 4 * SEG, raid=0)
    lun.write(0, b"\x11" * 2 * SEG)                  # segments 0-1 data, 2-3 holes
    snap = pool.snapshot("lun", "snap")
    filler = pool.create_ld("filler", 200 * SEG, raid=0)
    with pytest.raises(VsanError):
        filler.write_zeroes(0, filler.size, may_trim=False)
    pool.flush()
    lun.write(10, b"lun wins")                       # no room for the snapshot's copy
    assert snap.invalid
    return pool, lun, snap, filler


def offsets(size):
    pts = set(range(0, size, 64 * 1024)) | {1, SEG - 1, SEG, SEG + 1, 2 * SEG + 5, size - 1}
    return sorted(p for p in pts if p < size)


def test_every_read_and_write_of_an_invalid_snapshot_fails_with_eio(tmp_path):
    pool, lun, snap, _ = tight_pool(tmp_path)
    calls = {
        "read": lambda o, n: snap.read(o, n),
        "read_sparse": lambda o, n: snap.read_sparse(o, n),   # NBD structured reads
        "extents": lambda o, n: snap.extents(o, n),           # NBD block status
        "write": lambda o, n: snap.write(o, b"x" * n),
        "trim": lambda o, n: snap.trim(o, n),
        "write_zeroes": lambda o, n: snap.write_zeroes(o, n),
        "write_zeroes no-hole": lambda o, n: snap.write_zeroes(o, n, may_trim=False),
    }
    for off in offsets(snap.size):
        for n in {1, 512, 4096, SEG, snap.size - off} - {0}:
            if off + n > snap.size:
                continue
            for what, fn in calls.items():
                with pytest.raises(IOFailure) as ei:
                    fn(off, n)
                assert ei.value.errno == errno.EIO, (what, off, n)
    assert snap.info()["invalid"] is True and snap.info()["state"] == "invalid"
    with pytest.raises(InvalidArgument):
        pool.snapshot("snap", "again")
    with pytest.raises(InvalidArgument):
        pool.resize_ld("snap", 8 * SEG)


def test_trims_and_deletes_never_hand_space_to_an_invalid_snapshot(tmp_path):
    pool, lun, snap, filler = tight_pool(tmp_path)
    assert snap.allocated_segments() == 0 and snap.pred is None and snap.succ is None
    assert lun.pred is None                         # the LUN shares nothing with it any more
    ks, _ = filler.l2.allocated()
    holes = sorted(set(range(filler.size // SEG)) - set(ks.tolist()))
    with pytest.raises(VsanError):                   # the pool is full
        filler.write(holes[0] * SEG, b"\x22" * SEG)
    lun.trim(0, 4 * SEG)                             # a discard of the whole LUN
    pool.flush()
    assert snap.allocated_segments() == 0 and lun.allocated_segments() == 0
    for k in holes[:2]:                              # the two segments it held are free again
        filler.write(k * SEG, b"\x22" * SEG)
    assert check_pool(pool) == []
    # status never shows negative free space
    st = pool.status()
    assert st["free_bytes"] >= 0 and all(d["free_psegs"] >= 0 for d in st["drives"])
    info = {i["name"]: i for i in st["lds"]}
    assert info["snap"]["state"] == "invalid"
    pool.delete_ld("snap")
    assert "snap" not in pool.lds and check_pool(pool) == []
    pool.close()


def test_a_full_pool_never_shows_negative_free_space(tmp_path):
    pool, paths = make_pool(tmp_path, size=8 * MiB + 10 * 2 * MiB)
    filler = pool.create_ld("filler", 200 * SEG, raid=0)
    with pytest.raises(VsanError):
        filler.write_zeroes(0, filler.size, may_trim=False)
    # Large thin LUNs grow the metadata reserve until it takes what is free and more
    # (the current checkpoint's PSEGs count towards it).
    for gib in (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1):
        try:
            pool.create_ld(f"thin{gib}", gib << 30, raid=0)
        except VsanError:
            continue
    st = pool.status()
    assert st["free_bytes"] >= 0 and all(d["free_psegs"] >= 0 for d in st["drives"]), st["drives"]
    pool.close()
