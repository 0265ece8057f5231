"""Superblocks, the metadata log and checkpoint blobs on the quorum drives.

Works on any objects with ``pread/pwrite/fsync/failed`` (the physical layer's
drives) so that this layer imports nothing above it.

Durability steps, in order (each a write then fsync on every live quorum drive):
- log commit: append the batch after the last record;
- checkpoint: write the blob into PSEGs nobody references, then a superblock of
  generation g+1 pointing at it and saying where the log restarts; only then is
  the old blob's space released and the log rewritten from its start.
A crash between any two steps leaves the previous superblock, checkpoint and log
intact, and recovery finds the newest complete set.
"""

from __future__ import annotations

from ..errors import Corrupt
from . import format as fmt


class LogFull(Exception):
    pass


class MetaStore:
    def __init__(self, quorum: dict, quorum_size: int):
        self.quorum = quorum            # drive index -> drive
        self.log_size = quorum_size - fmt.LOG_OFF
        self.gen = 0
        self.next_seq = 1
        self.log_off = 0

    def _live(self):
        live = [d for d in self.quorum.values() if not d.failed]
        if not live:
            raise Corrupt("no live quorum drive left")
        return live

    # ---- superblock --------------------------------------------------------------
    @staticmethod
    def read_superblock(drives) -> tuple[int, dict] | None:
        best = None
        for d in drives:
            if d.failed:
                continue
            for off in fmt.SB_SLOT_OFF:
                got = fmt.unpack_superblock(d.pread(off, fmt.SB_SLOT_SIZE))
                if got and (best is None or got[0] > best[0]):
                    best = got
        return best

    def superblock_missing(self) -> bool:
        """True when a live quorum drive lacks the current generation (a crash inside
        write_superblock left it on some drives only); the caller must rewrite it, or
        losing the drives that have it rolls the pool back to an older generation."""
        for d in self._live():
            gens = [got[0] for got in (fmt.unpack_superblock(d.pread(off, fmt.SB_SLOT_SIZE))
                                       for off in fmt.SB_SLOT_OFF) if got]
            if self.gen not in gens:
                return True
        return False

    def write_superblock(self, body: dict) -> None:
        self.gen += 1
        blob = fmt.pack_superblock(self.gen, body)
        off = fmt.SB_SLOT_OFF[self.gen % 2]
        from ..faults import crashpoint
        for i, d in enumerate(self._live()):
            d.pwrite(off, blob)
            d.fsync()
            if i == 0:
                crashpoint("superblock.after_first_copy")

    # ---- log ---------------------------------------------------------------------
    def log_free(self) -> int:
        return self.log_size - self.log_off

    def encode(self, records: list[dict]) -> bytes:
        out, seq = [], self.next_seq
        for r in records:
            out.append(fmt.pack_record(seq, r))
            seq += 1
        return b"".join(out)

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        blob = self.encode(records)
        if len(blob) > self.log_free():
            raise LogFull(len(blob))
        from ..faults import crashpoint
        for i, d in enumerate(self._live()):
            d.pwrite(fmt.LOG_OFF + self.log_off, blob)
            d.fsync()
            if i == 0:
                crashpoint("log.after_first_copy")
        self.log_off += len(blob)
        self.next_seq += len(records)

    def replay(self, first_seq: int) -> list[dict]:
        """The longest valid record chain among the quorum copies. Reads only as far
        as the chain goes, so start-up follows the log's length."""
        best: list[dict] = []
        best_end = 0
        for d in self.quorum.values():
            if d.failed:
                continue
            recs, end, buf = [], 0, b""
            while True:
                k = min(max(len(buf), 1 << 20), self.log_size - len(buf))
                if k > 0:
                    buf += d.pread(fmt.LOG_OFF + len(buf), k)
                got, end, more = fmt.scan_records(buf, first_seq + len(recs), end)
                recs += got
                if not more or len(buf) >= self.log_size:
                    break
            if len(recs) > len(best):
                best, best_end = recs, end
        self.next_seq = first_seq + len(best)
        self.log_off = best_end
        return best

    def reset_log(self) -> None:
        """After a superblock names a new checkpoint, the log restarts at its start;
        stale records there have smaller sequence numbers and end every replay."""
        self.log_off = 0

    # ---- checkpoint blobs --------------------------------------------------------
    @staticmethod
    def write_blob(drive, offsets: list[int], pseg: int, blob: bytes) -> None:
        mv = memoryview(blob)
        for i, off in enumerate(offsets):
            piece = mv[i * pseg:(i + 1) * pseg]
            if not len(piece):
                break
            drive.pwrite(off, piece)
        drive.fsync()

    @staticmethod
    def read_blob(drive, offsets: list[int], pseg: int, length: int) -> bytes:
        parts, left = [], length
        for off in offsets:
            if left <= 0:
                break
            k = min(pseg, left)
            parts.append(drive.pread(off, k))
            left -= k
        return b"".join(parts)
