"""Direct I/O (O_DIRECT) drives: any offset, length and buffer works, and gives the
same bytes as a buffered drive (physical/direct.py, physical/drive.py).

The image files live under pytest's tmp_path, which must be on a file system with
O_DIRECT (ext4 here; the test checks that the descriptor really has it). A loop
device (root and losetup needed, else skipped) gives a real block device: ``auto``
chooses O_DIRECT for it, and its partial-block zeroing is checked.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import random
import shutil

import pytest

from vsand.errors import Unsupported
from vsand.physical import direct, drive as drive_mod
from vsand.physical.drive import Drive
from vsand.physical.readjob import ReadJob

from loopkit import loop_devices
from poolkit import NoFence

KiB = 1 << 10
MiB = 1 << 20
SIZE = 8 * MiB
C = direct.CHUNK
OFFSETS = [0, 1, 511, 512, 4095, 4096, 4097, 3 * 4096 + 100, C - 1, C + 4096, SIZE - 4096, SIZE - 3]
LENGTHS = [1, 100, 4095, 4096, 4097, 8192, 3 * 4096 + 1, C - 4096, C + 1, 2 * C + 4096]


def flags(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL)


@pytest.fixture
def pair(tmp_path):
    """(direct drive, buffered reference) on two images with the same random bytes."""
    data = random.Random(7).randbytes(SIZE)
    for name in ("direct.img", "ref.img"):
        (tmp_path / name).write_bytes(data)
    d = Drive.open(str(tmp_path / "direct.img"), io="direct")
    ref = Drive.open(str(tmp_path / "ref.img"), io="buffered")
    yield d, ref
    d.close()
    ref.close()


def same_image(d: Drive, ref: Drive) -> None:
    with open(d.path, "rb") as a, open(ref.path, "rb") as b:
        assert a.read(SIZE) == b.read(SIZE)


def test_modes_set_o_direct_only_where_asked(tmp_path):
    d = Drive.open(str(tmp_path / "d.img"), SIZE, io="direct")
    b = Drive.open(str(tmp_path / "b.img"), SIZE, io="buffered")
    a = Drive.open(str(tmp_path / "a.img"), SIZE, io="auto")        # an image file: buffered
    try:
        assert flags(d.fd) & os.O_DIRECT and d.direct and d.align == drive_mod.FILE_ALIGN
        assert not flags(b.fd) & os.O_DIRECT and not b.direct
        assert not flags(a.fd) & os.O_DIRECT and not a.direct
    finally:
        for x in (d, b, a):
            x.close()
    with pytest.raises(ValueError):
        Drive.open(str(tmp_path / "x.img"), SIZE, io="fast")


def test_unaligned_writes_keep_the_bytes_around_them(pair):
    d, ref = pair
    r = random.Random(1)
    for off in OFFSETS:
        for n in LENGTHS:
            n = min(n, SIZE - off)
            data = r.randbytes(n)
            d.pwrite(off, data)
            ref.pwrite(off, data)
    same_image(d, ref)


def test_writes_from_any_buffer_type_and_address(pair):
    d, ref = pair
    src = bytearray(random.Random(2).randbytes(3 * 4096 + 64))
    m = mmap.mmap(-1, 3 * 4096)
    m[:] = src[:3 * 4096]
    for off, data in [(4096, memoryview(src)[1:4097]), (8192, memoryview(src)[64:64 + 8192]),
                      (16384, m), (40960, memoryview(m)[:4096]), (50000, bytes(src[:5000]))]:
        d.pwrite(off, data)
        ref.pwrite(off, data)
    same_image(d, ref)


@pytest.mark.parametrize("memory", ["unaligned", "aligned"])
def test_reads_at_any_offset_length_and_address(pair, memory):
    d, ref = pair
    for off in OFFSETS:
        for n in LENGTHS:
            n = min(n, SIZE - off)
            assert d.pread(off, n) == ref.pread(off, n), (off, n)
            if memory == "aligned":
                m = mmap.mmap(-1, n)
                got = memoryview(m)
            else:
                got = memoryview(bytearray(n + 3))[3:]
            d.readinto(off, got)
            assert got.tobytes() == ref.pread(off, n), (off, n)
            got.release()


def test_reads_past_the_end_of_an_image_are_zeros(tmp_path):
    p = tmp_path / "short.img"
    p.write_bytes(b"\x07" * 5000)                  # not a whole number of blocks
    d = Drive.open(str(p), io="direct")
    try:
        assert d.pread(4000, 3000) == b"\x07" * 1000 + bytes(2000)
        buf = bytearray(b"\xff" * 8192)
        d.readinto(4096, memoryview(buf))
        assert buf == b"\x07" * 904 + bytes(8192 - 904)
        d.pwrite(6000, b"\x01" * 10)               # a partial block past the end: zeros around it
        assert d.pread(4096, 8192) == b"\x07" * 904 + bytes(6000 - 5000) + b"\x01" * 10 + bytes(8192 - 1914)
    finally:
        d.close()
    # a bounced write of several chunks whose last block lies past the end: the
    # bounce buffer's bytes from the chunk before must not land there
    p.write_bytes(b"\x07" * 2 * C)
    d = Drive.open(str(p), io="direct")
    try:
        data = random.Random(4).randbytes(2 * C + 50)
        d.pwrite(1, data)
        assert d.pread(0, 2 * C + 8192) == b"\x07" + data + bytes(8192 - 51)
    finally:
        d.close()


def test_zero_at_any_offset_and_length(pair):
    d, ref = pair
    for off, n in [(1, 10), (100, 5000), (4096, 4096), (4095, 8194), (C - 7, C + 100), (SIZE - 5, 5)]:
        d.zero(off, n)
        ref.zero(off, n)
        assert d.pread(off, n) == bytes(n)
    same_image(d, ref)


def test_aligned_requests_in_aligned_memory_need_no_bounce_buffer(pair, monkeypatch):
    d, _ = pair
    made = []
    real = direct._bounce

    def counting(n):
        made.append(n)
        return real(n)

    monkeypatch.setattr(direct, "_bounce", counting)
    m = mmap.mmap(-1, 64 * KiB)
    m[:] = os.urandom(64 * KiB)
    d.pwrite(128 * KiB, m)
    back = mmap.mmap(-1, 64 * KiB)
    d.readinto(128 * KiB, memoryview(back))
    assert back[:] == m[:] and made == []
    d.pwrite(128 * KiB + 1, memoryview(m)[:100])         # the counter sees the bounce
    d.readinto(128 * KiB, memoryview(bytearray(4096 + 1))[1:])
    assert made == [4096, 4096]


def test_direct_mode_refused_names_the_drive(tmp_path, monkeypatch):
    real = fcntl.fcntl

    def refuse(fd, cmd, arg=0):
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(fd, cmd, arg)

    monkeypatch.setattr(drive_mod.fcntl, "fcntl", refuse)
    path = str(tmp_path / "nodirect.img")
    with pytest.raises(Unsupported, match="nodirect.img.*O_DIRECT"):
        Drive.open(path, SIZE, io="direct")
    d = Drive.open(path, SIZE, io="buffered")      # the refused open left no lock behind
    d.close()


def check_readjob(d: Drive, ref: Drive) -> None:
    """A ReadJob over a direct and a buffered drive: only the buffered piece, cached,
    is served by try_now (a no-wait read of a direct drive would wait for the device
    on the loop, or fail with EINVAL and turn the no-wait path off for everyone)."""
    if not ReadJob.nowait:
        pytest.skip("no RWF_NOWAIT here")
    ref.pread(0, 64 * KiB)                         # in the page cache of the buffered drive
    pieces = [(d, 4096 + 3, 0, 5000), (d, 8192, 5000, 8192), (ref, 0, 13192, 64 * KiB)]
    job = ReadJob(13192 + 64 * KiB, pieces, False, NoFence())
    assert job.try_now() is False
    assert [p[0] for p in job.pieces] == [d, d]    # the cached buffered piece was served now
    assert ReadJob.nowait                          # and nothing turned the no-wait path off
    out = job.run()
    assert bytes(out) == ref.pread(4096 + 3, 5000) + ref.pread(8192, 8192) + ref.pread(0, 64 * KiB)
    job.done()


def test_readjob_leaves_direct_pieces_to_run(pair, monkeypatch):
    monkeypatch.setattr(ReadJob, "nowait", ReadJob.nowait)      # restored whatever happens
    check_readjob(*pair)


# ---- a real block device -------------------------------------------------------------------
@pytest.fixture
def loopdev(tmp_path):
    with loop_devices(tmp_path, 1, SIZE, random.Random(3).randbytes(SIZE)) as (dev,):
        yield dev, str(tmp_path / "loop0.img")


def test_block_device_auto_is_direct_and_zeroes_partial_blocks(loopdev, tmp_path, monkeypatch):
    monkeypatch.setattr(ReadJob, "nowait", ReadJob.nowait)
    dev, img = loopdev
    shutil.copyfile(img, tmp_path / "ref.img")
    ref = Drive.open(str(tmp_path / "ref.img"), io="buffered")
    d = Drive.open(dev, io="auto")
    try:
        assert d.is_block and d.direct and flags(d.fd) & os.O_DIRECT
        assert d.align == 512 and d.size == SIZE
        for off, n in [(100, 300), (1000, 5000), (4096, 8192), (C - 7, C + 100)]:
            d.zero(off, n)
            ref.zero(off, n)
        assert d._can_punch                        # BLKZEROOUT took the whole blocks
        data = os.urandom(3000)
        d.pwrite(777, data)
        ref.pwrite(777, data)
        d.fsync()
        assert d.pread(0, SIZE) == ref.pread(0, SIZE)
        check_readjob(d, ref)
    finally:
        d.close()
        ref.close()
