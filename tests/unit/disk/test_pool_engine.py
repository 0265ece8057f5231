"""Engine behaviours not covered by the model: block devices, start-up cost, degraded I/O."""

import os
import random

import pytest

from vsand.disk.pool import Pool
from vsand.physical.drive import Drive
from vsand.units import GiB, MiB, Units

from loopkit import loop_devices
from poolkit import make_pool


class CountingDrive(Drive):
    read_bytes = 0

    def pread(self, off, n):
        CountingDrive.read_bytes += n
        return super().pread(off, n)


def open_cost(tmp_path, drive_size):
    specs = [(os.path.join(str(tmp_path), f"d{i}.img"), drive_size, "default") for i in range(8)]
    pool = Pool.create(specs, Units(quorum=8 * MiB))
    ld = pool.create_ld("a", 64 * MiB, raid=5)
    for i in range(20):
        ld.write(i * 3 * MiB + 17, b"x" * 5000)
        pool.flush()
    for d in pool.drives.values():   # crash: no close, so the log must be replayed
        d.close()
    CountingDrive.read_bytes = 0
    pool = Pool.open([s[0] for s in specs], drive_factory=CountingDrive.open)
    assert pool.replayed > 0
    cost = CountingDrive.read_bytes
    assert pool.get("a").read(17, 5000) == b"x" * 5000
    pool.close()
    return cost


def test_startup_reads_follow_the_log_not_the_capacity(tmp_path):
    small = open_cost(tmp_path / "s", 256 * MiB)
    big = open_cost(tmp_path / "b", 64 * GiB)
    # The same metadata on 256x larger drives: start-up reads the same amount.
    assert big <= small * 1.2 + 4 * MiB, (small, big)


def test_degraded_reads_and_writes(tmp_path):
    pool, paths = make_pool(tmp_path)
    data = {r: os.urandom(3 * MiB) for r in (0, 1, 5)}
    for r in (0, 1, 5):
        pool.create_ld(f"l{r}", 8 * MiB, raid=r).write(MiB + 5, data[r])
    def drives_of(name):
        ld = pool.get(name)
        e = ld.l2.get(1)
        return {d for d, _ in pool.space.members(ld.table, (e >> 3) & 0x1FFFFFF)}

    victim = min(drives_of("l0") & drives_of("l5") & drives_of("l1"))  # 4 + 5 of 8 drives overlap
    pool.fail_drive(victim)
    for r in (1, 5):
        ld = pool.get(f"l{r}")
        assert ld.read(MiB + 5, 3 * MiB) == data[r]
        ld.write(MiB + 100, b"y" * 700000)
        data[r] = data[r][:95] + b"y" * 700000 + data[r][95 + 700000:]
    pool.close()
    pool = Pool.open(paths)
    assert pool.drives[victim].failed          # the failure is durable
    for r in (1, 5):
        assert pool.get(f"l{r}").read(MiB + 5, 3 * MiB) == data[r]
    from vsand.errors import IOFailure
    with pytest.raises(IOFailure):
        pool.get("l0").read(MiB + 5, 3 * MiB)   # RAID0 loses what was on the failed drive
    pool.close()


def test_drive_sizes_may_differ(tmp_path):
    sizes = [96 * MiB, 128 * MiB, 160 * MiB, 192 * MiB, 224 * MiB, 256 * MiB, 288 * MiB, 320 * MiB]
    pool, paths = make_pool(tmp_path, sizes=sizes)
    ld = pool.create_ld("a", 512 * MiB, raid=0)
    ld.write(0, os.urandom(400 * MiB))
    frac = [int(d.used.sum()) / d.npsegs for d in pool.allocator.drives.values()]
    assert max(frac) - min(frac) < 0.15, frac
    pool.close()


@pytest.mark.parametrize("io", ["auto", "buffered"])
def test_block_device_drives(tmp_path, io):
    """``auto`` opens block devices with O_DIRECT; both modes keep the data."""
    with loop_devices(tmp_path, 5, 48 * MiB) as loops:
        specs = [(dev, None, "default") for dev in loops]
        pool = Pool.create(specs, Units(quorum=8 * MiB), io=io)
        assert all(d.is_block and d.direct == (io == "auto") for d in pool.drives.values())
        ld = pool.create_ld("a", 32 * MiB, raid=5)
        blob = os.urandom(9 * MiB)
        ld.write(12345, blob)
        ld.trim(0, 2 * MiB)    # partial segment at the end of the range -> zeros via BLKZEROOUT/write
        pool.close()
        pool = Pool.open(loops, io=io)
        assert all(d.direct == (io == "auto") for d in pool.drives.values())
        got = pool.get("a").read(0, 12345 + len(blob))
        assert got[: 2 * MiB] == bytes(2 * MiB)
        assert got[2 * MiB:] == blob[2 * MiB - 12345:]
        pool.close()


def test_direct_io_pool_keeps_data_and_metadata(tmp_path):
    """Every drive O_DIRECT: labels, superblocks, log commits and checkpoints are
    written at offsets that are not block aligned and read back at start-up,
    after a clean close and after a crash (log replay); data at odd offsets too."""
    specs = [(os.path.join(str(tmp_path), f"d{i}.img"), 128 * MiB, "default") for i in range(8)]
    pool = Pool.create(specs, Units(quorum=8 * MiB), io="direct")
    assert all(d.direct for d in pool.drives.values())
    want = {}
    for raid in (0, 1, 5):
        ld = pool.create_ld(f"r{raid}", 16 * MiB, raid=raid)
        want[ld.name] = bytearray(16 * MiB)
    r = random.Random(5)

    def write(name, off, n):
        data = r.randbytes(n)
        pool.get(name).write(off, data)
        want[name][off:off + n] = data

    for i in range(30):
        write(f"r{(0, 1, 5)[i % 3]}", r.randrange(16 * MiB - 70000), r.randrange(1, 70000))
        if i % 7 == 0:
            pool.flush()
    pool.checkpoint()
    for i in range(12):                 # commits in the log after the checkpoint
        write(f"r{(0, 1, 5)[i % 3]}", r.randrange(16 * MiB - 9000), r.randrange(1, 9000))
        pool.flush()
    pool.get("r5").trim(4096 + 100, 3 * MiB)
    want["r5"][4096 + 100:4096 + 100 + 3 * MiB] = bytes(3 * MiB)
    pool.flush()
    for d in pool.drives.values():      # a crash: no checkpoint at close, the log is replayed
        d.close()
    paths = [s[0] for s in specs]
    pool = Pool.open(paths, io="direct")
    assert pool.replayed > 0 and all(d.direct for d in pool.drives.values())
    for name, data in want.items():
        assert pool.get(name).read(0, len(data)) == data, name
    pool.close()
    pool = Pool.open(paths, io="direct")    # and after the clean close's checkpoint
    for name, data in want.items():
        assert pool.get(name).read(0, len(data)) == data, name
    pool.close()


@pytest.mark.parametrize("n,raid,why", [
    (4, 5, "RAID5 needs 5 working drives in one RSS; LDAD 'default' has 4"),
    (6, 1, "RAID1 needs 4 pairs of working drives in one RSS; LDAD 'default' has 3"),
])
def test_create_refuses_a_raid_type_that_cannot_be_placed(tmp_path, n, raid, why):
    """Issue 13: a thin LUN that no RStore could ever hold used to be created, and
    every write to it then failed with ENOSPC; a failed drive counts as missing."""
    from vsand.errors import NoSpace
    pool, _ = make_pool(tmp_path, n=n)
    with pytest.raises(NoSpace, match=why):
        pool.create_ld("x", 64 * MiB, raid=raid)
    assert "x" not in pool.lds
    pool.create_ld("r0", 64 * MiB, raid=0)               # four drives hold RAID0
    pool.close()
    pool, _ = make_pool(tmp_path / "b", n=5)
    pool.create_ld("ok", 64 * MiB, raid=5)
    pool.fail_drive(4)
    with pytest.raises(NoSpace, match="has 4"):
        pool.create_ld("late", 64 * MiB, raid=5)
    pool.close()
