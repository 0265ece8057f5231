import uuid

import pytest
from hypothesis import given, settings, strategies as st

from vsand.errors import Corrupt
from vsand.meta import format as fmt


def test_label_round_trip_and_corruption():
    lab = fmt.Label(uuid.uuid4(), uuid.uuid4(), 3, 2 << 20, 64 << 20, 4 << 30)
    buf = bytearray(fmt.pack_label(lab))
    assert fmt.unpack_label(bytes(buf)) == lab
    for i in range(len(buf)):
        bad = bytearray(buf)
        bad[i] ^= 0x40
        with pytest.raises(Corrupt):
            fmt.unpack_label(bytes(bad))


def test_superblock_slot_validation():
    blob = fmt.pack_superblock(7, {"a": 1, "b": [1, 2]})
    assert fmt.unpack_superblock(blob) == (7, {"a": 1, "b": [1, 2]})
    assert fmt.unpack_superblock(blob[:-1]) is None          # torn
    bad = bytearray(blob)
    bad[-1] ^= 1
    assert fmt.unpack_superblock(bytes(bad)) is None         # bit rot
    assert fmt.unpack_superblock(bytes(len(blob))) is None   # never written


@given(st.lists(st.dictionaries(st.text(max_size=4), st.integers(0, 2**40), max_size=4), max_size=20),
       st.integers(1, 2**40))
@settings(max_examples=100, deadline=None)
def test_record_chain_round_trip(recs, seq):
    blob = b"".join(fmt.pack_record(seq + i, r) for i, r in enumerate(recs))
    got, end, more = fmt.scan_records(blob + bytes(64), seq)
    assert got == recs and end == len(blob) and not more


def test_record_chain_stops_at_torn_stale_or_corrupt_record():
    recs = [{"i": i, "pad": b"x" * 100} for i in range(5)]
    blob = b"".join(fmt.pack_record(10 + i, r) for i, r in enumerate(recs))
    one = len(fmt.pack_record(10, recs[0]))
    # torn in the middle of the 4th record: more data might follow in a larger read
    got, end, more = fmt.scan_records(blob[: 3 * one + 30], 10)
    assert got == recs[:3] and end == 3 * one and more
    # a corrupted payload ends the chain for good
    bad = bytearray(blob)
    bad[2 * one + 25] ^= 0xFF
    got, end, more = fmt.scan_records(bytes(bad), 10)
    assert got == recs[:2] and not more
    # stale records from an older log epoch (lower sequence) are not replayed
    got, _, more = fmt.scan_records(blob, 11)
    assert got == [] and not more


def test_checkpoint_round_trip_and_mismatch():
    blob = fmt.pack_checkpoint(5, {"lds": [], "x": b"\0" * 10})
    assert fmt.checkpoint_length(blob[:fmt.CKPT_HEAD.size]) == len(blob)
    assert fmt.unpack_checkpoint(blob, 5)["x"] == b"\0" * 10
    with pytest.raises(Corrupt):
        fmt.unpack_checkpoint(blob, 6)
    bad = bytearray(blob)
    bad[-1] ^= 1
    with pytest.raises(Corrupt):
        fmt.unpack_checkpoint(bytes(bad), 5)
