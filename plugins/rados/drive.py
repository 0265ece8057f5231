"""One vsand drive on RADOS: the same positional interface as a local drive
(vsand/physical/drive.py), over objects of one RADOS pool and namespace.

A drive's bytes past its quorum space are PSEG objects, ``vsand.d<drive>.<pseg>``,
created by their first write: a missing object, or the part past its end, reads as
zeros, and zeroing a whole PSEG removes its object. RADOS acknowledges a write once
every replica has it, so ``fsync`` has nothing to wait for.

The quorum space (label, superblock slots, metadata log) is kept as 4 KiB omap values
of the pool's metadata object, which the owner holds locked: every write to it is one
compound op that carries the lock guard, so a daemon that lost the pool cannot append
to the log or write a superblock, whatever state it wakes up in. A drive keeps the
values it holds in memory; they are small (the backend formats RADOS pools with a
small quorum space and one quorum copy), and only the owner writes them.
"""

from __future__ import annotations

from vsand.errors import IOFailure

from .client import WriteOp
from .errors import Blocklisted, Busy, ObjectNotFound, RadosError

QBLOCK = 4096


def pseg_oid(drive: int, index: int) -> str:
    return f"vsand.d{drive:03d}.{index:08x}"


def qkey(drive: int, block: int) -> str:
    return f"q{drive:03d}.{block:06x}"


class RadosDrive:
    is_block = False
    direct = True       # like O_DIRECT: no page cache, every call may block (worker threads)
    align = 1
    fd = -1
    heals_itself = True     # RADOS keeps the redundancy: an error is a stall, not a dead drive

    def __init__(self, backend, index: int, path: str, size: int, blocks: dict[int, bytes]):
        self.backend = backend
        self.index = index
        self.path = path
        self.size = size
        self.quorum = backend.quorum
        self.pseg = backend.pseg
        self.blocks = blocks            # quorum block -> its 4 KiB, as the metadata object has it
        self.failed = False
        self.timeout = 0.0              # RADOS ops have the cluster's own (backend timeout)
        self.dirty = False

    def _check(self) -> None:
        if self.failed:
            raise IOFailure(f"drive {self.path} is failed")

    def _error(self, what: str, off: int, e: RadosError) -> IOFailure:
        if isinstance(e, (Blocklisted, Busy)):
            # ESHUTDOWN: this client was blocklisted; EBUSY from a guarded op: the lock is
            # someone else's. Either way another daemon owns the pool now.
            self.backend.lost(f"{what} {self.path}@{off}: {e.strerror}")
        return IOFailure(f"{what} {self.path}@{off}: {e.strerror}")

    def _pieces(self, off: int, n: int):
        """(object, offset in it, offset in the request, length) of data-space bytes."""
        pos, end = off, off + n
        while pos < end:
            i, o = divmod(pos - self.quorum, self.pseg)
            k = min(self.pseg - o, end - pos)
            yield pseg_oid(self.index, i), o, pos - off, k
            pos += k

    # ---- reads ------------------------------------------------------------------
    def pread(self, off: int, n: int) -> bytes:
        buf = bytearray(n)
        self.readinto(off, memoryview(buf))
        return bytes(buf)

    def readinto(self, off: int, buf: memoryview) -> None:
        self._check()
        mv = memoryview(buf).cast("B")
        n = len(mv)
        q = max(0, min(off + n, self.quorum) - off)
        if q:
            self._read_quorum(off, mv[:q])
        if q < n:
            io = self.backend.io
            try:
                for oid, o, bo, k in self._pieces(off + q, n - q):
                    mv[q + bo:q + bo + k] = io.read(oid, k, o)
            except RadosError as e:
                raise self._error("read", off, e) from None

    def _read_quorum(self, off: int, mv: memoryview) -> None:
        pos = 0
        while pos < len(mv):
            b, o = divmod(off + pos, QBLOCK)
            k = min(QBLOCK - o, len(mv) - pos)
            blk = self.blocks.get(b)
            mv[pos:pos + k] = blk[o:o + k] if blk is not None else bytes(k)
            pos += k

    # ---- writes -----------------------------------------------------------------
    def pwrite(self, off: int, data) -> None:
        self._check()
        mv = memoryview(data).cast("B")
        n = len(mv)
        q = max(0, min(off + n, self.quorum) - off)
        if q:
            self._write_quorum(off, mv[:q])
        if q < n:
            io = self.backend.io
            try:
                for oid, o, bo, k in self._pieces(off + q, n - q):
                    io.write(oid, bytes(mv[q + bo:q + bo + k]), o)
            except RadosError as e:
                raise self._error("write", off, e) from None

    def _write_quorum(self, off: int, mv: memoryview) -> None:
        kv: dict[int, bytes] = {}
        pos = 0
        while pos < len(mv):
            b, o = divmod(off + pos, QBLOCK)
            k = min(QBLOCK - o, len(mv) - pos)
            blk = bytearray(kv.get(b) or self.blocks.get(b) or bytes(QBLOCK))
            blk[o:o + k] = mv[pos:pos + k]
            kv[b] = bytes(blk)
            pos += k
        op = WriteOp().omap_set({qkey(self.index, b): v for b, v in kv.items()})
        try:
            self.backend.update_meta(op)
        except RadosError as e:
            raise self._error("write", off, e) from None
        self.blocks.update(kv)

    def zero(self, off: int, n: int) -> None:
        """Whole PSEG objects are removed; partial ones get zeros written."""
        self._check()
        q = max(0, min(off + n, self.quorum) - off)
        if q:
            self._write_quorum(off, memoryview(bytes(q)))
        io = self.backend.io
        try:
            for oid, o, _, k in self._pieces(off + q, n - q):
                if o == 0 and k == self.pseg:
                    try:
                        io.remove(oid)
                    except ObjectNotFound:
                        pass
                else:
                    io.write(oid, bytes(k), o)
        except RadosError as e:
            raise self._error("zero", off, e) from None

    def fsync(self) -> None:
        self._check()

    def close(self) -> None:
        pass
