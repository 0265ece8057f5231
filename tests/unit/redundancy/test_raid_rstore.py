"""RStoreIO (DESIGN.md §5): RAID 0/1/5 I/O on one segment, healthy and degraded,
checked against a bytearray model of the 8 segments of one RStore."""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsand.errors import IOFailure
from vsand.physical.drive import Drive
from vsand.redundancy import geometry as g
from vsand.redundancy.parity import xor_all
from vsand.redundancy.rstore import RStoreIO

SLOTS = 8
COLS = g.DATA_COLUMNS
IO = settings(max_examples=80, deadline=None)
# Stripe units used here; multiples of 8 as consistent() views units as uint64.
SUS = [8, 16, 24, 64, 200, 512, 4096]


class FakeDrive:
    """A drive over a bytearray. Every I/O must stay inside one member PSEG hosted
    on this drive, so a wrong offset computation fails loudly."""

    def __init__(self, name: str, size: int):
        self.name = name
        self.buf = bytearray(size)
        self.failed = False
        self.regions: list[tuple[int, int]] = []

    def _check(self, off: int, n: int) -> None:
        if self.failed:
            raise IOFailure(f"drive {self.name} is failed")
        assert n >= 0
        assert any(lo <= off and off + n <= hi for lo, hi in self.regions), \
            f"I/O {off}+{n} on {self.name} outside its member PSEGs {self.regions}"

    def pread(self, off: int, n: int) -> bytes:
        self._check(off, n)
        return bytes(self.buf[off:off + n])

    def readinto(self, off: int, out) -> None:
        self._check(off, len(out))
        out[:] = self.buf[off:off + len(out)]

    def pwrite(self, off: int, data) -> None:
        mv = memoryview(data).cast("B")
        self._check(off, len(mv))
        self.buf[off:off + len(mv)] = mv

    def zero(self, off: int, n: int) -> None:
        self._check(off, n)
        self.buf[off:off + n] = bytes(n)

    def fsync(self) -> None:
        if self.failed:
            raise IOFailure(f"drive {self.name} is failed")


@dataclass
class Rig:
    raid: int
    su: int
    members: list[tuple[int, int]]
    drives: dict
    rio: RStoreIO
    model: bytearray  # SLOTS segments of COLS*su bytes

    @property
    def seg(self) -> int:
        return COLS * self.su

    @property
    def pseg(self) -> int:
        return SLOTS * self.su

    def mslice(self, slot, off, n):
        base = slot * self.seg + off
        return bytes(self.model[base:base + n])

    def write(self, slot, off, data):
        self.rio.write(self.raid, self.members, slot, off, data)
        base = slot * self.seg + off
        self.model[base:base + len(data)] = data

    def zero(self, slot):
        self.rio.zero(self.raid, self.members, slot)
        self.model[slot * self.seg:(slot + 1) * self.seg] = bytes(self.seg)

    def read(self, slot, off, n):
        return self.rio.read(self.raid, self.members, slot, off, n)

    def check_read(self, slot, off, n):
        got = self.read(slot, off, n)
        assert len(got) == n
        assert got == self.mslice(slot, off, n), f"slot {slot} range {off}+{n} differs from model"

    def check_all(self):
        for slot in range(SLOTS):
            self.check_read(slot, 0, self.seg)
            # also column by column (single-piece fast path)
            for c in range(COLS):
                self.check_read(slot, c * self.su, self.su)

    def member_drive(self, i) -> FakeDrive:
        return self.drives[self.members[i][0]]

    def raw(self, i, slot) -> bytes:
        d, base = self.members[i]
        return bytes(self.drives[d].buf[base + slot * self.su:base + (slot + 1) * self.su])

    def poke(self, i, slot, uo, data):
        """Changes a member's bytes behind RStoreIO's back."""
        d, base = self.members[i]
        o = base + slot * self.su + uo
        self.drives[d].buf[o:o + len(data)] = data


def make_rig(raid, su, drive_ids, groups, quorum, spare=0) -> Rig:
    width = g.WIDTH[raid]
    pseg = SLOTS * su
    members = [(drive_ids[i], quorum + groups[i] * pseg) for i in range(width)]
    drives = {}
    for d in drive_ids[:width + spare]:
        drives[d] = FakeDrive(f"d{d}", quorum + 4 * pseg)
    for d, base in members:
        drives[d].regions.append((base, base + pseg))
    # Drive contents start as noise (a reused drive), then the RStore is zeroed,
    # as the pool does for a fresh segment.
    rnd = random.Random(su * 1000 + raid)
    for drv in drives.values():
        drv.buf[:] = rnd.randbytes(len(drv.buf))
    rio = RStoreIO(drives, su)
    rig = Rig(raid, su, members, drives, rio, bytearray(SLOTS * COLS * su))
    for slot in range(SLOTS):
        rig.zero(slot)
    return rig


@st.composite
def rigs(draw, raids=(0, 1, 5)):
    raid = draw(st.sampled_from(raids))
    su = draw(st.sampled_from(SUS))
    width = g.WIDTH[raid]
    spare = draw(st.integers(0, 2))
    # Drive indices need not be 0..n-1 nor in member order.
    ids = draw(st.permutations([3 + 5 * i for i in range(width + spare)]))
    groups = draw(st.lists(st.integers(0, 3), min_size=width, max_size=width))
    quorum = draw(st.sampled_from([0, 8, 4096]))
    return make_rig(raid, su, ids, groups, quorum, spare)


@st.composite
def ranges(draw, su):
    seg = COLS * su
    kind = draw(st.sampled_from(["any", "any", "full", "unit", "tiny"]))
    if kind == "full":
        return 0, seg
    if kind == "unit":
        c = draw(st.integers(0, COLS - 1))
        return c * su, su
    if kind == "tiny":
        off = draw(st.integers(0, seg - 1))
        return off, draw(st.integers(1, min(3, seg - off)))
    off = draw(st.integers(0, seg - 1))
    return off, draw(st.integers(1, seg - off))


@st.composite
def ops(draw, su, max_size=25, kinds=("write", "write", "write", "read", "zero")):
    out = []
    for _ in range(draw(st.integers(1, max_size))):
        kind = draw(st.sampled_from(kinds))
        slot = draw(st.integers(0, SLOTS - 1))
        off, n = draw(ranges(su))
        out.append((kind, slot, off, n, draw(st.integers(0, 2**32))))
    return out


def run(rig: Rig, program, on_step=None):
    for i, (kind, slot, off, n, seed) in enumerate(program):
        if on_step:
            on_step(i)
        if kind == "write":
            data = random.Random(seed).randbytes(n)
            # the pool passes bytes, bytearray slices and memoryviews
            buf = [data, bytearray(data), memoryview(data)][seed % 3]
            rig.write(slot, off, buf)
        elif kind == "read":
            rig.check_read(slot, off, n)
        elif kind == "zero":
            rig.zero(slot)


# ---- healthy ---------------------------------------------------------------------

@IO
@given(st.data())
def test_healthy_round_trip_and_consistency(data):
    rig = data.draw(rigs())
    run(rig, data.draw(ops(rig.su)))
    rig.check_all()
    for slot in range(SLOTS):
        assert rig.rio.consistent(rig.raid, rig.members, slot)
    for _ in range(5):
        slot = data.draw(st.integers(0, SLOTS - 1))
        off, n = data.draw(ranges(rig.su))
        rig.check_read(slot, off, n)


@IO
@given(st.data())
def test_raid5_parity_is_xor_of_data(data):
    rig = data.draw(rigs(raids=(5,)))
    run(rig, data.draw(ops(rig.su)))
    for slot in range(SLOTS):
        p = g.parity_member(slot)
        cols = [rig.raw(g.data_members(5, slot, c)[0], slot) for c in range(COLS)]
        assert b"".join(cols) == rig.mslice(slot, 0, rig.seg)
        assert rig.raw(p, slot) == xor_all(cols, rig.su)


@IO
@given(st.data())
def test_raid1_copies_equal_model(data):
    rig = data.draw(rigs(raids=(1,)))
    run(rig, data.draw(ops(rig.su)))
    for slot in range(SLOTS):
        for c in range(COLS):
            want = rig.mslice(slot, c * rig.su, rig.su)
            assert rig.raw(2 * c, slot) == want
            assert rig.raw(2 * c + 1, slot) == want


def test_zero_length_read():
    rig = make_rig(5, 16, list(range(5)), [0] * 5, 0)
    assert rig.read(3, 10, 0) == b""


def test_writes_do_not_touch_other_slots():
    for raid in (0, 1, 5):
        rig = make_rig(raid, 16, list(range(g.WIDTH[raid])), [1] * g.WIDTH[raid], 8)
        for slot in range(SLOTS):
            rig.write(slot, 0, bytes([slot + 1]) * rig.seg)
        rig.write(3, 5, b"\xff" * 40)
        rig.check_all()


# ---- degraded --------------------------------------------------------------------

@IO
@given(st.data())
def test_degraded_one_failed_member(data):
    """RAID1/5 with one failed member: reads and further writes match the model.
    Hits the parity member for the slots whose parity lives on it."""
    rig = data.draw(rigs(raids=(1, 5)))
    program = data.draw(ops(rig.su, max_size=30))
    victim = data.draw(st.integers(0, g.WIDTH[rig.raid] - 1))
    fail_at = data.draw(st.integers(0, len(program)))

    def step(i):
        if i == fail_at:
            rig.member_drive(victim).failed = True
            rig.check_all()

    run(rig, program, step)
    rig.member_drive(victim).failed = True
    rig.check_all()
    # Writes touching every column of every slot, partial and full, in degraded mode.
    rnd = random.Random(fail_at)
    for slot in range(SLOTS):
        off = rnd.randrange(rig.seg)
        rig.write(slot, off, rnd.randbytes(rnd.randint(1, rig.seg - off)))
        rig.write(slot, 0, rnd.randbytes(1 + rig.su))
        rig.check_all()
    rig.write(0, 0, rnd.randbytes(rig.seg))
    rig.check_all()
    # Rebuild the failed member from the survivors: the stripe must then be
    # consistent, i.e. degraded writes kept the redundancy right.
    drv = rig.member_drive(victim)
    for slot in range(SLOTS):
        if rig.raid == 5:
            others = [rig.raw(i, slot) for i in range(5) if i != victim]
            rebuilt = xor_all(others, rig.su)
        else:
            rebuilt = rig.raw(victim ^ 1, slot)
        drv.failed = False
        rig.poke(victim, slot, 0, rebuilt)
        drv.failed = True
    drv.failed = False
    for slot in range(SLOTS):
        assert rig.rio.consistent(rig.raid, rig.members, slot)
    rig.check_all()


@IO
@given(st.data())
def test_raid5_degraded_partial_write_to_failed_column(data):
    """The reconstruct-write path: partial write that includes the failed column."""
    rig = data.draw(rigs(raids=(5,)))
    run(rig, data.draw(ops(rig.su, kinds=("write",))))
    slot = data.draw(st.integers(0, SLOTS - 1))
    col = data.draw(st.integers(0, COLS - 1))
    (victim,) = g.data_members(5, slot, col)
    rig.member_drive(victim).failed = True
    lo = data.draw(st.integers(0, col * rig.su + rig.su - 1))
    hi = data.draw(st.integers(max(lo + 1, col * rig.su + 1), rig.seg))
    rig.write(slot, lo, random.Random(lo * 31 + hi).randbytes(hi - lo))
    rig.check_all()


def test_raid5_degraded_parity_member_failed():
    rig = make_rig(5, 16, [7, 1, 4, 0, 9], [0, 1, 2, 3, 0], 64)
    slot = 2
    p = g.parity_member(slot)
    rig.write(slot, 0, bytes(range(64)))
    rig.member_drive(p).failed = True
    rig.write(slot, 5, b"\xaa" * 30)  # partial, parity gone
    rig.write(slot, 0, b"\x55" * 64)  # full stripe, parity gone
    rig.write(slot, 60, b"\x11" * 4)
    rig.check_all()
    # Slots with parity elsewhere lose a data column on this drive: reconstruct.
    other = 3
    assert g.parity_member(other) != p
    rig.write(other, 0, bytes(range(100, 164)))
    rig.check_all()


def test_raid0_failed_member_raises():
    rig = make_rig(0, 16, [2, 0, 3, 1], [0, 0, 1, 1], 8)
    for slot in range(SLOTS):
        rig.write(slot, 0, bytes([slot]) * 64)
    rig.member_drive(2).failed = True
    for slot in range(SLOTS):
        with pytest.raises(IOFailure):
            rig.read(slot, 2 * 16, 16)
        with pytest.raises(IOFailure):
            rig.read(slot, 0, 64)
        with pytest.raises(IOFailure):
            rig.read(slot, 2 * 16 + 15, 2)
        with pytest.raises(IOFailure):
            rig.rio.write(0, rig.members, slot, 40, b"x")
        # other columns are still served
        rig.check_read(slot, 0, 32)
        rig.check_read(slot, 48, 16)
        rig.write(slot, 0, b"y" * 32)
        rig.check_read(slot, 0, 32)


def test_raid1_both_copies_failed_raises():
    rig = make_rig(1, 16, list(range(8)), [0] * 8, 0)
    rig.write(1, 0, b"z" * 64)
    rig.member_drive(2).failed = True
    rig.member_drive(3).failed = True
    with pytest.raises(IOFailure):
        rig.read(1, 16, 1)
    with pytest.raises(IOFailure):
        rig.rio.write(1, rig.members, 1, 20, b"q")
    rig.check_read(1, 0, 16)
    rig.check_read(1, 32, 32)


@pytest.mark.parametrize("slot", range(SLOTS))
def test_raid5_two_failed_members_raise(slot):
    rig = make_rig(5, 16, [4, 3, 2, 1, 0], [0] * 5, 0)
    rig.write(slot, 0, bytes(range(64)))
    for a in range(5):
        for b in range(a + 1, 5):
            rig.member_drive(a).failed = True
            rig.member_drive(b).failed = True
            for c in range(COLS):
                (m,) = g.data_members(5, slot, c)
                if m in (a, b):
                    with pytest.raises(IOFailure):
                        rig.read(slot, c * 16, 16)
                    with pytest.raises(IOFailure):
                        rig.read(slot, 0, 64)
                else:
                    rig.check_read(slot, c * 16, 16)
            rig.member_drive(a).failed = False
            rig.member_drive(b).failed = False


# ---- zero ------------------------------------------------------------------------

@IO
@given(st.data())
def test_zero_slot(data):
    rig = data.draw(rigs())
    run(rig, data.draw(ops(rig.su, kinds=("write",))))
    slot = data.draw(st.integers(0, SLOTS - 1))
    rig.zero(slot)
    assert rig.read(slot, 0, rig.seg) == bytes(rig.seg)
    rig.check_all()
    assert rig.rio.consistent(rig.raid, rig.members, slot)
    for i in range(g.WIDTH[rig.raid]):
        assert rig.raw(i, slot) == bytes(rig.su)


@IO
@given(st.data())
def test_zero_slot_degraded(data):
    rig = data.draw(rigs(raids=(1, 5)))
    run(rig, data.draw(ops(rig.su, kinds=("write",))))
    victim = data.draw(st.integers(0, g.WIDTH[rig.raid] - 1))
    rig.member_drive(victim).failed = True
    slot = data.draw(st.integers(0, SLOTS - 1))
    rig.zero(slot)
    rig.check_all()
    off, n = data.draw(ranges(rig.su))
    rig.write(slot, off, b"\x01" * n)
    rig.check_all()


# ---- resync ----------------------------------------------------------------------

@IO
@given(st.data())
def test_resync_repairs_corrupted_redundancy(data):
    rig = data.draw(rigs(raids=(1, 5)))
    run(rig, data.draw(ops(rig.su, kinds=("write",))))
    slot = data.draw(st.integers(0, SLOTS - 1))
    uo = data.draw(st.integers(0, rig.su - 1))
    n = data.draw(st.integers(1, rig.su - uo))
    if rig.raid == 5:
        victim = g.parity_member(slot)
    else:
        victim = 2 * data.draw(st.integers(0, COLS - 1)) + 1
    old = rig.raw(victim, slot)[uo:uo + n]
    rig.poke(victim, slot, uo, bytes(b ^ 0x5A for b in old))
    assert not rig.rio.consistent(rig.raid, rig.members, slot)
    rig.rio.resync(rig.raid, rig.members, slot)
    for s in range(SLOTS):
        assert rig.rio.consistent(rig.raid, rig.members, s)
    rig.check_all()


@IO
@given(st.data())
def test_resync_closes_raid5_write_hole(data):
    """Data written without its parity (crash between the two): after resync the
    stripe is consistent and a later failure of another column reconstructs the
    new data."""
    rig = data.draw(rigs(raids=(5,)))
    run(rig, data.draw(ops(rig.su, kinds=("write",))))
    slot = data.draw(st.integers(0, SLOTS - 1))
    col = data.draw(st.integers(0, COLS - 1))
    uo = data.draw(st.integers(0, rig.su - 1))
    new = bytes(b ^ 0xFF for b in rig.mslice(slot, col * rig.su + uo, rig.su - uo))
    (m,) = g.data_members(5, slot, col)
    rig.poke(m, slot, uo, new)
    base = slot * rig.seg + col * rig.su + uo
    rig.model[base:base + len(new)] = new
    assert not rig.rio.consistent(5, rig.members, slot)
    rig.rio.resync(5, rig.members, slot)
    assert rig.rio.consistent(5, rig.members, slot)
    rig.check_all()
    other = data.draw(st.sampled_from([i for i in range(5) if i != m]))
    rig.member_drive(other).failed = True
    rig.check_all()


def test_resync_degraded_is_harmless():
    for raid in (1, 5):
        rig = make_rig(raid, 16, list(range(g.WIDTH[raid])), [0] * g.WIDTH[raid], 0)
        for slot in range(SLOTS):
            rig.write(slot, 0, bytes(range(slot, slot + 64)))
        rig.member_drive(1).failed = True
        for slot in range(SLOTS):
            rig.rio.resync(raid, rig.members, slot)
        rig.check_all()


# ---- real drives -----------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(st.sampled_from([0, 1, 5]), st.sampled_from([512, 4096]), st.data())
def test_real_sparse_drives(raid, su, data):
    """Same round trip on sparse image files through vsand.physical.drive.Drive
    (zero() punches holes there)."""
    width = g.WIDTH[raid]
    pseg = SLOTS * su
    quorum = 4096
    with tempfile.TemporaryDirectory() as tmp:
        drives = {i: Drive.open(os.path.join(tmp, f"d{i}.img"), quorum + 3 * pseg) for i in range(width)}
        try:
            members = [(i, quorum + (i % 3) * pseg) for i in range(width)]
            rig = Rig(raid, su, members, drives, RStoreIO(drives, su), bytearray(SLOTS * COLS * su))
            run(rig, data.draw(ops(su, max_size=12)))
            rig.check_all()
            for slot in range(SLOTS):
                assert rig.rio.consistent(raid, members, slot)
            if raid:
                drives[data.draw(st.integers(0, width - 1))].failed = True
                run(rig, data.draw(ops(su, max_size=8)))
                rig.check_all()
        finally:
            for d in drives.values():
                d.close()
