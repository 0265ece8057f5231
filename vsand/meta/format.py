"""On-disk byte layouts. Only this module knows them.

Quorum space at the start of every drive (sizes from ``Units``):

    0         label           4 KiB   struct LABEL, crc32 over the bytes before it
    64 KiB    superblock A    256 KiB struct SB_HEAD + msgpack body
    320 KiB   superblock B    256 KiB (generation g goes to slot g % 2)
    1 MiB     metadata log    up to the end of the quorum space: commits back to back,
                              each struct COMMIT_HEAD + a msgpack list of records
    quorum    PSEG 0, PSEG 1, ...

Checkpoint blobs live in PSEGs (mirrored on the quorum drives) and start with
struct CKPT_HEAD. Every header carries a crc32 so that a torn or stale write is
recognised and ignored rather than trusted.

A commit is the unit of atomicity: its records are applied on replay only when
the whole commit is there. Commits are numbered and chained: each header carries
the crc of the commit before it (for the first commit after a checkpoint, the
``log_salt`` its superblock names), so bytes left in the log by an older or a
torn commit can never pass for the next one, even where an overwrite left part
of them behind.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

import msgpack

from ..errors import Corrupt
from . import stream

LABEL_MAGIC = b"VSANDLBL"
SB_MAGIC = b"VSANDSUP"
COMMIT_MAGIC = b"VCMT"
CKPT_MAGIC = b"VSANDCKP"
FORMAT_VERSION = 2

LABEL_OFF = 0
LABEL_SIZE = 4096
SB_SLOT_OFF = (64 * 1024, 320 * 1024)
SB_SLOT_SIZE = 256 * 1024
LOG_OFF = 1024 * 1024

# magic, version, pool uuid, drive uuid, index, pseg size, quorum size, drive size, crc
LABEL = struct.Struct("<8sI16s16sIIQQI")
# magic, generation, body length, crc of body
SB_HEAD = struct.Struct("<8sQII")
# magic, payload length, commit number, chain (crc of the commit before), crc of
# (length, number, chain, payload)
COMMIT_HEAD = struct.Struct("<4sIQII")
# magic, checkpoint sequence, body length, crc of body
CKPT_HEAD = struct.Struct("<8sQQI")

assert LABEL.size == 72
assert SB_HEAD.size == 24
assert COMMIT_HEAD.size == 24
assert CKPT_HEAD.size == 28
assert LABEL.size <= LABEL_SIZE <= SB_SLOT_OFF[0]
assert SB_SLOT_OFF[1] + SB_SLOT_SIZE <= LOG_OFF


@dataclass(frozen=True)
class Label:
    pool_uuid: uuid.UUID
    drive_uuid: uuid.UUID
    index: int
    pseg: int
    quorum: int
    size: int


def pack_label(lab: Label) -> bytes:
    body = LABEL.pack(LABEL_MAGIC, FORMAT_VERSION, lab.pool_uuid.bytes, lab.drive_uuid.bytes,
                      lab.index, lab.pseg, lab.quorum, lab.size, 0)[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def unpack_label(buf: bytes) -> Label:
    if len(buf) < LABEL.size:
        raise Corrupt("label: short read")
    magic, ver, pu, du, idx, pseg, quorum, size, crc = LABEL.unpack_from(buf)
    if magic != LABEL_MAGIC:
        raise Corrupt("label: no vsand label (bad magic)")
    if zlib.crc32(buf[: LABEL.size - 4]) != crc:
        raise Corrupt("label: checksum mismatch")
    if ver != FORMAT_VERSION:
        raise Corrupt(f"label: unsupported format version {ver}")
    return Label(uuid.UUID(bytes=pu), uuid.UUID(bytes=du), idx, pseg, quorum, size)


def pack_superblock(gen: int, body: dict) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    if SB_HEAD.size + len(payload) > SB_SLOT_SIZE:
        raise Corrupt(f"superblock too large ({len(payload)} bytes)")
    return SB_HEAD.pack(SB_MAGIC, gen, len(payload), zlib.crc32(payload)) + payload


def unpack_superblock(buf: bytes) -> tuple[int, dict] | None:
    """Returns (generation, body) or None when the slot holds nothing valid."""
    if len(buf) < SB_HEAD.size:
        return None
    magic, gen, n, crc = SB_HEAD.unpack_from(buf)
    if magic != SB_MAGIC or n > SB_SLOT_SIZE - SB_HEAD.size:
        return None
    payload = bytes(buf[SB_HEAD.size: SB_HEAD.size + n])
    if len(payload) != n or zlib.crc32(payload) != crc:
        return None
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except ValueError:
        return None
    return (gen, body) if isinstance(body, dict) else None


def _commit_crc(n: int, seq: int, chain: int, payload) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<IQI", n, seq, chain)))


def pack_commit(seq: int, chain: int, records: list[dict]) -> tuple[bytes, int]:
    """(bytes of commit ``seq`` chained to ``chain``, its crc = the next one's chain)."""
    payload = msgpack.packb(records, use_bin_type=True)
    crc = _commit_crc(len(payload), seq, chain, payload)
    return COMMIT_HEAD.pack(COMMIT_MAGIC, len(payload), seq, chain, crc) + payload, crc


def scan_commits(buf, seq: int, chain: int, off: int = 0, limit: int | None = None):
    """Parses the valid chain of commits in ``buf`` from ``off``, the first one
    numbered ``seq`` and chained to ``chain``.

    Returns (commits, end offset, chain after the last, more) where each commit is
    its list of records and ``more`` says the chain may go on past the end of
    ``buf`` (a header or payload is cut by the buffer's end). The chain ends at the
    first commit that is torn, stale (wrong number or chain) or fails its checksum:
    it was never acknowledged as durable, and none of its records apply. At most
    ``limit`` commits are taken when it is given.
    """
    mv, out = memoryview(buf), []
    while limit is None or len(out) < limit:
        if off + COMMIT_HEAD.size > len(mv):
            return out, off, chain, True
        magic, n, s, prev, crc = COMMIT_HEAD.unpack_from(mv, off)
        if magic != COMMIT_MAGIC or s != seq or prev != chain:
            return out, off, chain, False
        if off + COMMIT_HEAD.size + n > len(mv):
            return out, off, chain, True
        payload = mv[off + COMMIT_HEAD.size: off + COMMIT_HEAD.size + n]
        if _commit_crc(n, s, prev, payload) != crc:
            return out, off, chain, False
        try:
            records = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except ValueError:      # a valid checksum over bytes we did not write: stop here
            return out, off, chain, False
        if not isinstance(records, list):
            return out, off, chain, False
        out.append(records)
        off += COMMIT_HEAD.size + n
        seq += 1
        chain = crc
    return out, off, chain, False


class CheckpointBlob:
    """A checkpoint as pieces (stream.encode): the maps are written from their
    arrays, never joined into one bytes object. ``pieces()`` yields the blob's
    bytes in order with zeros in place of the head; ``head()`` is the real head,
    with the crc of what ``pieces()`` did yield, to be written over them last.

    The body refers to live arrays: nothing may change them between the first
    call to ``pieces()`` and the last piece."""

    def __init__(self, seq: int, body: dict):
        self.seq = seq
        self.body = body
        self.nbytes = CKPT_HEAD.size + sum(len(p) for p in stream.encode(body))
        self._crc: int | None = None

    def pieces(self):
        yield bytes(CKPT_HEAD.size)
        crc, n = 0, 0
        for p in stream.encode(self.body):
            crc = zlib.crc32(p, crc)
            n += len(p)
            yield p
        if CKPT_HEAD.size + n != self.nbytes:   # a map changed while it was written
            raise RuntimeError("the checkpoint body changed while it was written")
        self._crc = crc

    def head(self) -> bytes:
        assert self._crc is not None, "head() before every piece was taken"
        return CKPT_HEAD.pack(CKPT_MAGIC, self.seq, self.nbytes - CKPT_HEAD.size, self._crc)


def pack_checkpoint(seq: int, body: dict) -> bytes:
    """The whole blob as one bytes object (small pools, tests)."""
    blob = CheckpointBlob(seq, body)
    rest = b"".join(list(blob.pieces())[1:])
    return blob.head() + rest


def checkpoint_length(head: bytes) -> int:
    magic, _seq, n, _crc = CKPT_HEAD.unpack_from(head)
    if magic != CKPT_MAGIC:
        raise Corrupt("checkpoint: bad magic")
    return CKPT_HEAD.size + n


def read_checkpoint(readinto, length: int, seq: int) -> dict:
    """Decodes a checkpoint of ``length`` bytes from ``readinto(buf)`` (fills ``buf``
    with the blob's next bytes) in bounded reads; binaries of stream.BIG bytes or
    more come back as bytearrays. Corrupt unless every byte checks out."""
    if length < CKPT_HEAD.size:
        raise Corrupt("checkpoint: shorter than its head")
    head = bytearray(CKPT_HEAD.size)
    readinto(memoryview(head))
    magic, s, n, crc = CKPT_HEAD.unpack(head)
    if magic != CKPT_MAGIC:
        raise Corrupt("checkpoint: bad magic")
    if s != seq:
        raise Corrupt(f"checkpoint: sequence {s}, superblock expects {seq}")
    if CKPT_HEAD.size + n > length:
        raise Corrupt("checkpoint: checksum mismatch (shorter than its head says)")
    dec = stream.Decoder(readinto, n, "checkpoint")
    try:
        body = dec.whole()
    except Corrupt as e:
        dec.drain()             # undecodable: say checksum mismatch when that is why
        if dec.crc != crc:
            raise Corrupt("checkpoint: checksum mismatch") from None
        raise Corrupt(f"checkpoint: cannot be decoded ({e.message})") from None
    if dec.crc != crc:
        raise Corrupt("checkpoint: checksum mismatch")
    if not isinstance(body, dict):
        raise Corrupt("checkpoint: not a checkpoint body")
    return body


def unpack_checkpoint(buf, seq: int) -> dict:
    """read_checkpoint over a blob in memory."""
    mv, pos = memoryview(buf).cast("B"), 0

    def readinto(out) -> None:
        nonlocal pos
        out[:] = mv[pos:pos + len(out)]
        pos += len(out)
    return read_checkpoint(readinto, len(mv), seq)
