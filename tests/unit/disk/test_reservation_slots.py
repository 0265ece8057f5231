"""A reservation is kept in free slots as well as in free PSEGs (space.py).

A reserved snapshot's first copy on write may open a new RStore: its other
slots are what the next copies of that reservation count on, so a LUN without a
reservation must not fill them. The snapclone model found the gap (a BGCOPY
failing with NoSpace in a full pool); these tests pin it down without hypothesis."""

from __future__ import annotations

import pytest

from poolkit import make_pool
from vsand.errors import NoSpace
from vsand.units import MiB

SEG = MiB


def fill(pool, name: str, size: int = 512 * MiB) -> int:
    """Writes ``name`` (made on first use) segment by segment until the pool refuses."""
    if name not in pool.lds:
        pool.create_ld(name, size, raid=0)
    ld, n = pool.get(name), 0
    for k in range(size // SEG):
        if ld.l2.get(k):
            continue
        try:
            ld.write(k * SEG, b"\x05" * SEG)
        except NoSpace:
            break
        n += 1
    return n


def backed(pool) -> bool:
    """The free PSEGs cover what the reservations need beyond the free slots."""
    return pool.allocator.free_psegs("default") >= pool.space.reserved_psegs("default")


@pytest.mark.parametrize("held", [2, 3, 8])
def test_reserved_snapshot_copies_after_a_full_pool(tmp_path, held):
    pool, _ = make_pool(tmp_path, n=6, size=48 * MiB)
    pool.create_ld("x", held * SEG, raid=0)
    x = pool.get("x")
    for k in range(held):
        x.write(k * SEG, bytes([k + 1]) * SEG)
    pool.snapshot("x", "s", reserve=True)
    assert pool.get("s").reserve_left == held
    fill(pool, "fill")
    assert backed(pool)
    for k in range(held):
        # each write copies one segment for s out of its reservation, and the
        # filler takes whatever it may in between
        x.write(k * SEG, b"\xee" * SEG)
        assert backed(pool), k
        fill(pool, "fill")
        assert backed(pool), k
    s = pool.get("s")
    assert s.reserve_left == 0
    for k in range(held):
        assert s.read(k * SEG, SEG) == bytes([k + 1]) * SEG
        assert x.read(k * SEG, SEG) == b"\xee" * SEG


def test_filler_takes_every_slot_beyond_the_reservation(tmp_path):
    """Free slots beyond what is promised stay usable: the rule costs nothing else."""
    pool, _ = make_pool(tmp_path, n=6, size=48 * MiB)
    pool.create_ld("x", 2 * SEG, raid=0)
    x = pool.get("x")
    for k in range(2):
        x.write(k * SEG, b"\x01" * SEG)
    pool.snapshot("x", "s", reserve=True)
    s, t = pool.get("s"), x.table
    assert fill(pool, "fill") > 0
    assert t.nfree == s.reserve_left == 2
    x.write(0, b"\xee" * SEG)
    assert fill(pool, "fill") == 0
    assert t.nfree == s.reserve_left == 1
    x.write(SEG, b"\xee" * SEG)
    assert t.nfree == s.reserve_left == 0
    assert s.read(0, 2 * SEG) == b"\x01" * (2 * SEG)
