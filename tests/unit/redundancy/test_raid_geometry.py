"""Property tests for the pure RAID geometry (DESIGN.md §5) and XOR parity."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsand.redundancy import geometry as g
from vsand.redundancy.parity import xor_all, xor_into

import numpy as np

SLOTS = 8  # segments per RStore
RAIDS = (0, 1, 5)
GEOM = settings(max_examples=200, deadline=None)


# ---- split -----------------------------------------------------------------------

@st.composite
def ranges(draw, max_su=5000):
    su = draw(st.integers(1, max_su))
    seg = g.DATA_COLUMNS * su
    off = draw(st.integers(0, seg))
    n = draw(st.integers(0, seg - off))
    return su, off, n


@GEOM
@given(ranges())
def test_split_covers_range_exactly_once_in_order(r):
    su, off, n = r
    pieces = g.split(off, n, su)
    pos = off
    bo_expected = 0
    for col, uo, bo, k in pieces:
        assert k > 0
        assert 0 <= col < g.DATA_COLUMNS
        assert 0 <= uo and uo + k <= su, "piece crosses a stripe-unit boundary"
        assert col * su + uo == pos, "pieces not contiguous / in order in the segment"
        assert bo == bo_expected, "buffer offsets not contiguous"
        pos += k
        bo_expected += k
    assert pos == off + n
    assert sum(k for *_, k in pieces) == n


@GEOM
@given(ranges())
def test_split_is_minimal(r):
    """One piece per stripe unit touched: adjacent pieces are in different units."""
    su, off, n = r
    pieces = g.split(off, n, su)
    touched = 0 if n == 0 else (off + n - 1) // su - off // su + 1
    assert len(pieces) == touched
    cols = [p[0] for p in pieces]
    assert cols == sorted(set(cols))


@GEOM
@given(st.integers(1, 1 << 20), st.integers(0, 1 << 24), st.data())
def test_split_arbitrary_range_bytes_map_back(su, off, data):
    """Every byte of any range (not only within a segment) maps to col*su+uo."""
    n = data.draw(st.integers(0, 40 * su))
    pieces = g.split(off, n, su)
    assert sum(p[3] for p in pieces) == n
    for col, uo, bo, k in pieces:
        assert col * su + uo == off + bo
        assert (col * su + uo + k - 1) // su == col  # last byte still in the unit


def test_split_examples():
    assert g.split(0, 0, 16) == []
    assert g.split(0, 64, 16) == [(0, 0, 0, 16), (1, 0, 16, 16), (2, 0, 32, 16), (3, 0, 48, 16)]
    assert g.split(15, 2, 16) == [(0, 15, 0, 1), (1, 0, 1, 1)]
    assert g.split(20, 5, 16) == [(1, 4, 0, 5)]


# ---- member mapping ----------------------------------------------------------------

def _placements(raid: int, su: int):
    """Every (member, byte offset in its PSEG) with what lives there."""
    out = []
    for slot in range(SLOTS):
        for col in range(g.DATA_COLUMNS):
            for m in g.data_members(raid, slot, col):
                for b in range(su):
                    out.append(((m, g.pseg_offset(slot, su, b)), ("data", slot, col, b)))
        if raid == 5:
            for b in range(su):
                out.append(((g.parity_member(slot), g.pseg_offset(slot, su, b)), ("parity", slot, b)))
    return out


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(RAIDS), st.integers(1, 48))
def test_every_byte_lands_exactly_once(raid, su):
    pseg = SLOTS * su
    width = g.WIDTH[raid]
    placed = _placements(raid, su)
    where = [p for p, _ in placed]
    # Injective: no two (slot, column, byte, copy) share a member byte.
    assert len(set(where)) == len(where)
    for m, o in where:
        assert 0 <= m < width
        assert 0 <= o < pseg
    # ... and surjective: every byte of every member PSEG is used (no holes).
    assert set(where) == {(m, o) for m in range(width) for o in range(pseg)}
    copies = 2 if raid == 1 else 1
    data = [w for w in placed if w[1][0] == "data"]
    assert len(data) == SLOTS * g.DATA_COLUMNS * su * copies


@GEOM
@given(st.sampled_from(RAIDS), st.integers(1, 1 << 18), st.integers(0, SLOTS - 1), st.data())
def test_split_pieces_land_in_distinct_member_ranges(raid, su, slot, data):
    """A write's pieces map to disjoint, in-PSEG member byte ranges."""
    seg = g.DATA_COLUMNS * su
    off = data.draw(st.integers(0, seg - 1))
    n = data.draw(st.integers(1, seg - off))
    spans = []
    for col, uo, bo, k in g.split(off, n, su):
        for m in g.data_members(raid, slot, col):
            lo = g.pseg_offset(slot, su, uo)
            assert 0 <= lo and lo + k <= SLOTS * su
            assert slot * su <= lo and lo + k <= (slot + 1) * su  # stays in this stripe's unit
            spans.append((m, lo, lo + k))
    spans.sort()
    for (m1, _, hi1), (m2, lo2, _) in zip(spans, spans[1:]):
        assert m1 != m2 or hi1 <= lo2


@GEOM
@given(st.integers(0, 10_000))
def test_raid5_parity_distinct_from_data(slot):
    p = g.parity_member(slot)
    data = [g.data_members(5, slot, c)[0] for c in range(g.DATA_COLUMNS)]
    assert 0 <= p < 5
    assert p not in data
    assert sorted(data + [p]) == list(range(5))
    # left-symmetric: data column 0 follows parity
    assert data[0] == (p + 1) % 5


@GEOM
@given(st.integers(0, 10_000))
def test_raid5_parity_rotates_over_all_members(start):
    assert {g.parity_member(s) for s in range(start, start + 5)} == set(range(5))


def test_raid5_parity_rotation_in_one_rstore():
    assert [g.parity_member(s) for s in range(SLOTS)] == [4, 3, 2, 1, 0, 4, 3, 2]
    for s in range(SLOTS - 4):
        assert {g.parity_member(x) for x in range(s, s + 5)} == set(range(5))


@pytest.mark.parametrize("slot", range(SLOTS))
def test_column_of_member_inverts_data_members(slot):
    assert g.column_of_member(slot, g.parity_member(slot)) is None
    for c in range(g.DATA_COLUMNS):
        (m,) = g.data_members(5, slot, c)
        assert g.column_of_member(slot, m) == c
    cols = [g.column_of_member(slot, m) for m in range(5)]
    assert sorted(c for c in cols if c is not None) == list(range(g.DATA_COLUMNS))


@pytest.mark.parametrize("slot", range(SLOTS))
def test_raid1_and_raid0_members(slot):
    for c in range(g.DATA_COLUMNS):
        a, b = g.data_members(1, slot, c)
        assert (a, b) == (2 * c, 2 * c + 1)
        assert a != b
        assert g.data_members(0, slot, c) == (c,)
    all1 = [m for c in range(g.DATA_COLUMNS) for m in g.data_members(1, slot, c)]
    assert sorted(all1) == list(range(g.WIDTH[1]))


def test_unknown_raid_type():
    with pytest.raises(ValueError):
        g.data_members(6, 0, 0)


@GEOM
@given(st.integers(1, 1 << 20), st.integers(0, SLOTS - 1), st.data())
def test_pseg_offset_in_range(su, slot, data):
    uo = data.draw(st.integers(0, su - 1))
    o = g.pseg_offset(slot, su, uo)
    assert 0 <= o < SLOTS * su
    assert divmod(o, su) == (slot, uo)


# ---- parity ----------------------------------------------------------------------

def _py_xor(bufs, n):
    out = bytearray(n)
    for b in bufs:
        for i, x in enumerate(bytes(b)):
            out[i] ^= x
    return bytes(out)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 300).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.binary(min_size=n, max_size=n), max_size=6))),
    st.sampled_from([bytes, bytearray, memoryview]))
def test_xor_all_matches_python(nb, kind):
    n, bufs = nb
    got = xor_all([kind(b) if kind is not memoryview else memoryview(bytes(b)) for b in bufs], n)
    assert isinstance(got, bytes)
    assert got == _py_xor(bufs, n)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 200).flatmap(lambda n: st.lists(st.binary(min_size=n, max_size=n), min_size=1, max_size=5)))
def test_xor_properties(bufs):
    n = len(bufs[0])
    # x ^ x == 0, and any buffer is the xor of the others and the total (reconstruction)
    assert xor_all(bufs + bufs, n) == bytes(n)
    total = xor_all(bufs, n)
    for i in range(len(bufs)):
        assert xor_all(bufs[:i] + bufs[i + 1:] + [total], n) == bufs[i]
    acc = np.zeros(n, dtype=np.uint8)
    for b in bufs:
        xor_into(acc, b)
    assert acc.tobytes() == total


def test_xor_all_accepts_generator():
    assert xor_all((bytes([i]) * 4 for i in (1, 2, 4)), 4) == b"\x07" * 4
