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


def chain_of_commits(commits, seq, salt):
    """The bytes of ``commits`` (lists of records) as a log from ``seq``, chained to ``salt``."""
    out, chain = [], salt
    for i, recs in enumerate(commits):
        blob, chain = fmt.pack_commit(seq + i, chain, recs)
        out.append(blob)
    return out


@given(st.lists(st.lists(st.dictionaries(st.text(max_size=4), st.integers(0, 2**40), max_size=4),
                         max_size=5), max_size=10),
       st.integers(1, 2**40), st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None)
def test_commit_chain_round_trip(commits, seq, salt):
    blob = b"".join(chain_of_commits(commits, seq, salt))
    got, end, _chain, more = fmt.scan_commits(blob + bytes(64), seq, salt)
    assert got == commits and end == len(blob) and not more


def test_commit_chain_stops_at_torn_stale_corrupt_or_unchained_commit():
    commits = [[{"i": i, "pad": b"x" * 100}, {"j": i}] for i in range(5)]
    parts = chain_of_commits(commits, 10, 77)
    blob = b"".join(parts)
    one = len(parts[0])
    # torn in the middle of the 4th commit: none of its records, and a larger read may go on
    got, end, _, more = fmt.scan_commits(blob[: 3 * one + 30], 10, 77)
    assert got == commits[:3] and end == 3 * one and more
    # a torn commit loses all its records, not a prefix of them
    for cut in range(2 * one + 1, 3 * one):
        got, end, _, _ = fmt.scan_commits(blob[:cut] + bytes(3 * one - cut) + blob[3 * one:], 10, 77)
        assert got == commits[:2] and end == 2 * one
    # a corrupted payload ends the chain for good
    bad = bytearray(blob)
    bad[2 * one + 25] ^= 0xFF
    got, end, _, more = fmt.scan_commits(bytes(bad), 10, 77)
    assert got == commits[:2] and not more
    # stale commits from an older log epoch (lower number) are not replayed
    got, _, _, more = fmt.scan_commits(blob, 11, 77)
    assert got == [] and not more
    # a log that restarted with another salt does not accept these bytes
    got, _, _, more = fmt.scan_commits(blob, 10, 78)
    assert got == [] and not more


def test_left_over_bytes_of_an_older_commit_never_pass_for_the_next():
    """A short commit written over the start of a longer torn one leaves that one's
    tail behind; even a whole commit in that tail with the right number is refused,
    because it chains to the torn commit, not to the one now before it."""
    salt = 5
    c1, crc1 = fmt.pack_commit(1, salt, [{"t": "old", "pad": b"y" * 50}])
    c2, _ = fmt.pack_commit(2, crc1, [{"t": "old2"}])
    n1, _ = fmt.pack_commit(1, salt, [{"t": "new"}])
    log = bytearray(c1 + c2)
    log[: len(n1)] = n1
    got, end, _, _ = fmt.scan_commits(bytes(log[: len(n1)]) + bytes(len(c1) - len(n1)) + c2, 1, salt)
    assert got == [[{"t": "new"}]] and end == len(n1)


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
