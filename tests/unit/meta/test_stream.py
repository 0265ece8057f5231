"""msgpack in pieces (meta/stream.py) and checkpoint blobs written and read in
pieces: byte for byte what msgpack.packb gives (readers of whole blobs and older
versions read them unchanged), and decoding that reads a damaged blob as Corrupt,
never as anything else."""

from __future__ import annotations

import os
import random
import zlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vsand.errors import Corrupt
from vsand.meta import format as fmt, stream
from vsand.meta.store import WRITE_CHUNK, MetaStore

leaves = (st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats(allow_nan=False)
          | st.text(max_size=300) | st.binary(max_size=300)
          | st.sampled_from([b"x" * 255, b"y" * 256, b"z" * 65535, b"w" * 70000, "s" * 70000]))
values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=20)
                      | st.dictionaries(st.integers(0, 1 << 40) | st.text(max_size=10), kids, max_size=20),
                      max_leaves=60)


def decode(buf: bytes):
    mv, pos = memoryview(buf), 0

    def readinto(out):
        nonlocal pos
        out[:] = mv[pos:pos + len(out)]
        pos += len(out)
    return stream.Decoder(readinto, len(buf)).whole()


def plain(obj):
    """What msgpack decodes: bytearrays are bytes."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return bytes(obj) if isinstance(obj, bytearray) else obj


@settings(max_examples=300, deadline=None)
@given(values)
def test_encode_is_packb_and_decode_is_unpackb(obj):
    packed = msgpack.packb(obj, use_bin_type=True)
    assert b"".join(stream.encode(obj)) == packed
    assert plain(decode(packed)) == msgpack.unpackb(packed, raw=False, strict_map_key=False)


def test_arrays_are_packed_in_place_as_one_binary():
    a = np.arange(70000, dtype=np.uint32)
    obj = {"one": memoryview(a), "parts": stream.Bin([a[:5], a[5:40000], a[40000:]]), "small": memoryview(a[:3])}
    pieces = list(stream.encode(obj))
    assert b"".join(pieces) == msgpack.packb({"one": a.tobytes(), "parts": a.tobytes(),
                                              "small": a[:3].tobytes()}, use_bin_type=True)
    assert any(p.obj is a for p in pieces if isinstance(p, memoryview))     # not copied
    got = decode(b"".join(pieces))
    assert isinstance(got["one"], bytearray) and isinstance(got["small"], bytes)   # stream.BIG
    assert np.array_equal(np.frombuffer(got["parts"], np.uint32), a)


def test_damaged_input_is_corrupt_and_allocates_nothing_huge():
    rng = random.Random(3)
    for _ in range(20000):
        try:
            decode(os.urandom(rng.randrange(1, 40)))
        except Corrupt:
            pass
    with pytest.raises(Corrupt, match="runs past"):
        decode(b"\xc6\xff\xff\xff\xf0" + b"x" * 10)            # a 4 GiB binary in 15 bytes
    with pytest.raises(Corrupt, match="cannot fit"):
        decode(b"\xdd\x7f\xff\xff\xff")                         # 2G elements
    with pytest.raises(Corrupt, match="nested"):
        decode(b"\x91" * 100 + b"\x00")
    with pytest.raises(Corrupt, match="after its end"):
        decode(b"\x01\x02")
    with pytest.raises(Corrupt, match="map key"):
        decode(b"\x81\x90\x00")                                # a list as a key


def test_checkpoint_blob_is_the_whole_blob_format():
    """A streamed checkpoint is byte for byte head + packb(body): what this version
    wrote before streaming, so either reads the other's."""
    lm = np.arange(2048, dtype=np.uint32)
    rows = np.arange(4 * 20000, dtype=np.uint32).reshape(20000, 4)
    body = {"seq": 9, "lds": [{"id": 1, "lmaps": {0: memoryview(lm), 3: memoryview(lm[::-1].copy())}}],
            "rsd": [{"count": 20000, "rows": stream.Bin([rows[:16384], rows[16384:]])}]}
    joined = {"seq": 9, "lds": [{"id": 1, "lmaps": {0: lm.tobytes(), 3: lm[::-1].tobytes()}}],
              "rsd": [{"count": 20000, "rows": rows.tobytes()}]}
    payload = msgpack.packb(joined, use_bin_type=True)
    old = fmt.CKPT_HEAD.pack(fmt.CKPT_MAGIC, 9, len(payload), zlib.crc32(payload)) + payload
    assert fmt.pack_checkpoint(9, body) == old
    got = fmt.unpack_checkpoint(old, 9)
    assert plain(got) == joined


class MemDrive:
    failed = False

    def __init__(self, size: int):
        self.buf = bytearray(size)
        self.syncs = 0

    def pwrite(self, off, data):
        self.buf[off:off + len(data)] = data

    def readinto(self, off, mv):
        mv[:] = self.buf[off:off + len(mv)]

    def fsync(self):
        self.syncs += 1


@pytest.mark.parametrize("pseg", [4096, 1 << 20])
def test_blob_written_to_several_drives_in_pieces_reads_back(pseg):
    rng = np.random.default_rng(5)
    big = rng.integers(0, 1 << 32, size=3 * WRITE_CHUNK // 4 + 77, dtype=np.uint32)
    body = {"a": [memoryview(rng.integers(0, 255, size=n, dtype=np.uint8)) for n in (1, 5000, 300, 9000)],
            "big": memoryview(big), "tail": "x" * 1000}
    blob = fmt.CheckpointBlob(4, body)
    n = -(-blob.nbytes // pseg)
    drives = [MemDrive(pseg * (2 * n + 3)) for _ in range(3)]
    offsets = [[pseg * (2 * i + 1) for i in range(n)] for _ in drives]   # scattered PSEGs
    MetaStore.write_blobs(list(zip(drives, offsets)), pseg, blob.pieces(), blob.head)
    whole = fmt.pack_checkpoint(4, body)
    for d, offs in zip(drives, offsets):
        assert d.syncs == 1
        assert b"".join(bytes(d.buf[o:o + pseg]) for o in offs)[:len(whole)] == whole
        got = fmt.read_checkpoint(MetaStore.blob_reader(d, offs, pseg, blob.nbytes), blob.nbytes, 4)
        assert np.array_equal(np.frombuffer(got["big"], np.uint32), big)
        with pytest.raises(Corrupt, match="checksum"):      # the superblock says less than the head
            fmt.read_checkpoint(MetaStore.blob_reader(d, offs, pseg, blob.nbytes - 1), blob.nbytes - 1, 4)
    d = drives[0]
    d.buf[offsets[0][0] + 100] ^= 1
    with pytest.raises(Corrupt, match="checksum mismatch"):
        fmt.read_checkpoint(MetaStore.blob_reader(d, offsets[0], pseg, blob.nbytes), blob.nbytes, 4)
