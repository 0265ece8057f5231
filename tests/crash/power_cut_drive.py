"""A Drive that simulates a volatile write cache, for power-cut tests (DESIGN.md §9, §12).

Every write (and every ``zero``: hole punching is a write of zeros) since the drive's
last fsync stays in an in-memory overlay that reads see; ``fsync`` moves the overlay
to the image file. A power cut then keeps, per 4 KiB block, either nothing or one
of the versions the block was given since the last fsync (a real disk may persist
unflushed writes partially and in any order, but a 4 KiB block is never torn):

- ``"all"``    drop every unflushed write;
- ``"subset"`` per block, keep a random one of its unflushed versions or none.

All drives of one simulated machine share a ``PowerWorld``, which counts write-side
operations and raises ``PowerCut`` (a BaseException, so no engine ``except`` clause
swallows it) at a chosen one, aborting whatever the engine was doing at that moment.
"""

from __future__ import annotations

import random

from vsand.physical.drive import Drive

BLOCK = 4096
ZERO = bytes(BLOCK)


class PowerCut(BaseException):
    """The power went out; the pool object that saw this must be abandoned."""


class PowerWorld:
    def __init__(self, cut_at: int | None = None):
        self.drives: list[PowerCutDrive] = []
        self.ios = 0
        self.cut_at = cut_at
        self.dead = False

    def open(self, path: str, create_size: int | None = None) -> "PowerCutDrive":
        d = PowerCutDrive.open(path, create_size)
        d.world = self
        self.drives.append(d)
        return d

    def tick(self) -> None:
        if self.dead:
            raise PowerCut("I/O after the power cut")
        self.ios += 1
        if self.cut_at is not None and self.ios >= self.cut_at:
            raise PowerCut(f"power cut at I/O {self.ios}")

    def cut(self, mode: str, rng: random.Random) -> int:
        """Loses the volatile caches (``mode`` "all" or "subset"); returns how many
        unflushed blocks were kept. The drives are closed and refuse further I/O."""
        kept = 0
        self.dead = True
        for d in self.drives:
            kept += d.lose(mode, rng)
            Drive.close(d)
        return kept


class PowerCutDrive(Drive):
    world: PowerWorld

    def __init__(self, path, fd, size, is_block, **kw):
        super().__init__(path, fd, size, is_block, **kw)
        self.pending: dict[int, list[bytes]] = {}   # block number -> versions, oldest first

    # ---- overlay ------------------------------------------------------------------
    def _current(self, b: int) -> bytes:
        v = self.pending.get(b)
        return v[-1] if v else Drive.pread(self, b * BLOCK, BLOCK)

    def _put(self, b: int, data: bytes) -> None:
        self.pending.setdefault(b, []).append(data)

    def _write(self, off: int, data) -> None:
        mv = memoryview(data).cast("B")
        end = off + len(mv)
        pos = off
        while pos < end:
            b, bo = divmod(pos, BLOCK)
            k = min(BLOCK - bo, end - pos)
            chunk = mv[pos - off:pos - off + k]
            if k == BLOCK:
                blk = bytes(chunk)
            else:
                cur = bytearray(self._current(b))
                cur[bo:bo + k] = chunk
                blk = bytes(cur)
            self._put(b, ZERO if blk == ZERO else blk)
            pos += k

    # ---- Drive interface ------------------------------------------------------------
    def pread(self, off: int, n: int) -> bytes:
        if self.world.dead:
            raise PowerCut("I/O after the power cut")
        data = Drive.pread(self, off, n)
        if not self.pending or n == 0:
            return data
        b0, b1 = off // BLOCK, (off + n - 1) // BLOCK
        hits = [b for b in range(b0, b1 + 1) if b in self.pending] if b1 - b0 < len(self.pending) \
            else sorted(b for b in self.pending if b0 <= b <= b1)
        if not hits:
            return data
        buf = bytearray(data)
        for b in hits:
            blk = self.pending[b][-1]
            lo, hi = max(off, b * BLOCK), min(off + n, (b + 1) * BLOCK)
            buf[lo - off:hi - off] = blk[lo - b * BLOCK:hi - b * BLOCK]
        return bytes(buf)

    def readinto(self, off: int, buf) -> None:
        # Every read path of Drive must see the overlay.
        buf[:] = self.pread(off, len(buf))

    def pwrite(self, off: int, data) -> None:
        self._check()
        self.world.tick()
        self._write(off, data)

    def zero(self, off: int, n: int) -> None:
        self._check()
        self.world.tick()
        pos, end = off, off + n
        while pos < end:           # whole blocks share one immutable zero block
            b, bo = divmod(pos, BLOCK)
            k = min(BLOCK - bo, end - pos)
            if k == BLOCK:
                self._put(b, ZERO)
            else:
                self._write(pos, bytes(k))
            pos += k

    def fsync(self) -> None:
        self._check()
        self.world.tick()
        self._apply({b: v[-1] for b, v in self.pending.items()})
        self.pending.clear()

    def _apply(self, blocks: dict[int, bytes]) -> None:
        """Writes blocks to the image file, punching holes for runs of zeros."""
        run: list[int] = []

        def flush_run():
            if not run:
                return
            off = run[0] * BLOCK
            if all(blocks[b] is ZERO for b in run):
                Drive.zero(self, off, len(run) * BLOCK)
            else:
                Drive.pwrite(self, off, b"".join(blocks[b] for b in run))
            run.clear()

        for b in sorted(blocks):
            if run and (b != run[-1] + 1 or (blocks[b] is ZERO) != (blocks[run[-1]] is ZERO)):
                flush_run()
            run.append(b)
        flush_run()

    def lose(self, mode: str, rng: random.Random) -> int:
        keep: dict[int, bytes] = {}
        if mode == "subset":
            for b in sorted(self.pending):
                versions = self.pending[b]
                i = rng.randrange(len(versions) + 1)
                if i:
                    keep[b] = versions[i - 1]
        elif mode != "all":
            raise ValueError(mode)
        self._apply(keep)
        self.pending.clear()
        return len(keep)

    def close(self) -> None:
        # A clean close (pool.close) has fsynced; anything still cached survives a
        # process exit on a real machine too, so it goes to the image file.
        if self.fd >= 0 and not self.world.dead:
            self.fsync_quiet()
        Drive.close(self)

    def fsync_quiet(self) -> None:
        self._apply({b: v[-1] for b, v in self.pending.items()})
        self.pending.clear()


def _check_overrides() -> None:
    """Fails loudly if Drive grows an I/O method this simulation does not cover."""
    io = {n for n in vars(Drive) if not n.startswith("_") and callable(getattr(Drive, n))}
    covered = {"open", "pread", "readinto", "pwrite", "zero", "fsync", "close"}
    missing = io - covered
    assert not missing, f"PowerCutDrive does not simulate Drive.{', Drive.'.join(sorted(missing))}"


_check_overrides()
