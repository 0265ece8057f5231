"""Revert (disk/revert.py, operation ``rvt``): what it refuses, what it costs. The
byte-for-byte behaviour, crashes and commit faults are the snapshot model's
(tests/model/test_snapshot_model.py, rule ``revert``)."""

from __future__ import annotations

import pytest

from poolkit import make_pool
from vsand.disk.check import check_pool
from vsand.errors import InvalidArgument, NoSpace
from vsand.units import MiB

SEG = MiB


def names(pool, name):
    return [ld.name for ld in pool.chain(name)]


def test_refused_while_a_snapclone_of_the_chain_copies(tmp_path):
    pool, _ = make_pool(tmp_path)
    pool.create_ld("x", 8 * MiB, raid=0)
    pool.get("x").write(0, b"\x01" * SEG)
    pool.snapshot("x", "s")
    pool.snapclone("x", "c")
    with pytest.raises(InvalidArgument, match="snapclone c still depends on this chain"):
        pool.revert("x", "s")
    assert names(pool, "x") == ["s", "c", "x"]
    with pytest.raises(InvalidArgument, match="c is a copying-clone, not a snapshot"):
        pool.revert("x", "c")
    pool.close()


def test_a_reserved_snapshot_needs_a_full_reservation_after(tmp_path):
    """s reads everything through the LUN after the revert: its reservation grows
    from (size - owned) to size; refused, with nothing changed, when that does not fit."""
    pool, _ = make_pool(tmp_path, n=6, size=48 * MiB)
    pool.create_ld("x", 8 * MiB, raid=0)
    x = pool.get("x")
    for k in range(8):
        x.write(k * SEG, bytes([k + 1]) * SEG)
    pool.snapshot("x", "s", reserve=True)
    for k in range(8):           # s now owns all 8 segments; its reservation is used up
        x.write(k * SEG, b"\xee" * SEG)
    pool.create_ld("fill", 512 * MiB, raid=0)
    f = pool.get("fill")
    try:
        for k in range(512):
            f.write(k * SEG, b"\x05" * SEG)
    except NoSpace:
        pass
    with pytest.raises(NoSpace, match="reserved snapshot: after the revert it needs 8 MiB more"):
        pool.revert("x", "s", keep="k")
    assert names(pool, "x") == ["s", "x"] and "k" not in pool.lds
    assert pool.get("x").read(0, SEG) == b"\xee" * SEG
    pool.delete_ld("fill")
    pool.revert("x", "s")
    assert pool.get("x").read(0, 8 * SEG) == b"".join(bytes([k + 1]) * SEG for k in range(8))
    assert pool.get("s").reserve_left == 8
    assert check_pool(pool) == []
    pool.close()


def test_only_a_lun_is_reverted_to_a_snapshot_of_its_own_chain(tmp_path):
    pool, _ = make_pool(tmp_path)
    for n in ("x", "y"):
        pool.create_ld(n, 4 * MiB)
    pool.snapshot("x", "s")
    pool.snapshot("s", "ss")
    pool.snapshot("y", "t")
    with pytest.raises(InvalidArgument, match="s is a snapshot: only a LUN"):
        pool.revert("s", "ss")
    with pytest.raises(InvalidArgument, match=r"t is not a snapshot in the chain of x \(ss, s\)"):
        pool.revert("x", "t")
    pool.revert("x", "ss")          # a snapshot of a snapshot is in the chain too
    assert names(pool, "x") == ["ss", "x", "s"]
    pool.close()


def test_a_protected_lun_keeps_its_data_through_a_revert(tmp_path):
    """A revert without --keep frees the LUN's current bytes, which protection is
    there to prevent; with --keep nothing is freed, so it is allowed."""
    pool, _ = make_pool(tmp_path)
    pool.create_ld("x", 4 * MiB)
    pool.get("x").write(0, b"\x01" * SEG)
    pool.snapshot("x", "s")
    pool.get("x").write(0, b"\x02" * SEG)
    pool.set_attrs("x", protected=True)
    with pytest.raises(InvalidArgument, match="x is protected: a revert would free its current data"):
        pool.revert("x", "s")
    assert pool.get("x").read(0, 1) == b"\x02"
    pool.revert("x", "s", keep="k")
    assert pool.get("x").read(0, 1) == b"\x01" and pool.get("k").read(0, 1) == b"\x02"
    pool.close()


def test_pool_is_not_an_ld_name(tmp_path):
    """Pool-wide tasks have the target "pool": an LD of that name would be taken
    for it (a rename would retarget a scrub, a delete cancel a rebuild)."""
    pool, _ = make_pool(tmp_path)
    pool.create_ld("x", 4 * MiB)
    for call in (lambda: pool.create_ld("pool", 4 * MiB), lambda: pool.rename_ld("x", "pool"),
                 lambda: pool.snapshot("x", "pool")):
        with pytest.raises(InvalidArgument, match="'pool' is reserved"):
            call()
    assert sorted(pool.lds) == ["x"]
    pool.close()
