"""Superblocks, the metadata log and checkpoint blobs on the quorum drives.

Works on any objects with ``pread/pwrite/fsync/failed`` (the physical layer's
drives) so that this layer imports nothing above it.

Durability steps, in order (each a write then fsync on every live quorum drive,
one drive after the other):
- commit: append one commit unit after the last one (format.py: all or nothing);
- checkpoint: write the blob into PSEGs nobody references, then a superblock of
  generation g+1 pointing at it and naming where the log restarts (its first
  commit number and the salt it chains to); only then is the old blob's space
  released and the log rewritten from its start.
A crash between any two steps leaves the previous superblock, checkpoint and log
intact, and recovery finds the newest complete set: the newest valid superblock
on any drive, and the longest chain of whole commits on any quorum copy.

A write that fails leaves the copies in a state nobody can know (a commit may be
on some copies, or torn on one): the store then refuses further appends until a
new superblock (a checkpoint) has superseded the log.
"""

from __future__ import annotations

import secrets

from ..errors import Corrupt, IOFailure
from ..faults import crashpoint
from . import format as fmt

WRITE_CHUNK = 256 * 1024     # checkpoint bytes gathered per write


class LogFull(Exception):
    pass


class MetaStore:
    def __init__(self, quorum: dict, quorum_size: int):
        self.quorum = quorum            # drive index -> drive
        self.log_size = quorum_size - fmt.LOG_OFF
        self.gen = 0
        self.next_seq = 1
        self.log_off = 0
        self.salt = 0                   # what the log's first commit chains to
        self.chain = 0                  # what the next commit chains to
        self.stale = False              # a log write failed: append refused until reset_log

    def _live(self):
        live = [d for d in self.quorum.values() if not d.failed]
        if not live:
            raise IOFailure("no live quorum drive left: the pool's metadata cannot be written")
        return live

    # ---- superblock --------------------------------------------------------------
    @staticmethod
    def read_superblock(drives) -> tuple[int, dict] | None:
        best = None
        for d in drives:
            if d.failed:
                continue
            for off in fmt.SB_SLOT_OFF:
                try:
                    got = fmt.unpack_superblock(d.pread(off, fmt.SB_SLOT_SIZE))
                except IOFailure:
                    continue        # an unreadable copy is one copy fewer, not the end
                if got and (best is None or got[0] > best[0]):
                    best = got
        return best

    def superblock_missing(self) -> bool:
        """True when a live quorum drive lacks the current generation (a crash inside
        write_superblock left it on some drives only); the caller must rewrite it, or
        losing the drives that have it rolls the pool back to an older generation."""
        for d in self._live():
            gens = []
            for off in fmt.SB_SLOT_OFF:
                try:
                    got = fmt.unpack_superblock(d.pread(off, fmt.SB_SLOT_SIZE))
                except IOFailure:
                    got = None
                if got:
                    gens.append(got[0])
            if self.gen not in gens:
                return True
        return False

    def write_superblock(self, body: dict) -> None:
        self.gen += 1
        blob = fmt.pack_superblock(self.gen, body)
        off = fmt.SB_SLOT_OFF[self.gen % 2]
        for i, d in enumerate(self._live()):
            d.pwrite(off, blob)
            d.fsync()
            if i == 0:
                crashpoint("superblock.after_first_copy")

    def write_superblock_each(self, body: dict) -> int:
        """Best effort: the superblock on every live quorum drive that takes it;
        returns how many did. For recording trouble, never for a commit."""
        self.gen += 1
        blob = fmt.pack_superblock(self.gen, body)
        off = fmt.SB_SLOT_OFF[self.gen % 2]
        ok = 0
        for d in self.quorum.values():
            if d.failed:
                continue
            try:
                d.pwrite(off, blob)
                d.fsync()
                ok += 1
            except IOFailure:
                pass
        return ok

    # ---- log ---------------------------------------------------------------------
    def log_free(self) -> int:
        return self.log_size - self.log_off

    def append(self, records: list[dict]) -> None:
        """One commit of ``records``, durable on every live quorum copy when this
        returns. LogFull when it does not fit (nothing written); IOFailure when a
        copy failed (the log is then stale until the next checkpoint)."""
        if not records:
            return
        if self.stale:
            raise IOFailure("metadata log not rewritten since a failed write")
        blob, crc = fmt.pack_commit(self.next_seq, self.chain, records)
        if len(blob) > self.log_free():
            raise LogFull(len(blob))
        live = self._live()
        try:
            for i, d in enumerate(live):
                d.pwrite(fmt.LOG_OFF + self.log_off, blob)
                if i == 0:
                    crashpoint("log.before_first_sync")
                d.fsync()
                if i == 0:
                    crashpoint("log.after_first_copy")
        except IOFailure:
            self.stale = True
            raise
        self.log_off += len(blob)
        self.next_seq += 1
        self.chain = crc

    def replay(self, first_seq: int, salt: int, end: int | None = None) -> list[list[dict]]:
        """The longest chain of whole commits among the quorum copies, numbered below
        ``end`` when given. Reads only as far as the chain goes, so start-up follows
        the log's length."""
        best: list[list[dict]] = []
        best_end, best_chain = 0, salt
        for d in self.quorum.values():
            if d.failed:
                continue
            commits, off, chain, buf = [], 0, salt, b""
            try:
                while end is None or first_seq + len(commits) < end:
                    k = min(max(len(buf), 1 << 16), self.log_size - len(buf))
                    if k > 0:
                        buf += d.pread(fmt.LOG_OFF + len(buf), k)
                    limit = None if end is None else end - first_seq - len(commits)
                    got, off, chain, more = fmt.scan_commits(buf, first_seq + len(commits), chain, off, limit)
                    commits += got
                    if not more or len(buf) >= self.log_size:
                        break
            except IOFailure:
                pass                    # what was read before the error still counts
            if len(commits) > len(best):
                best, best_end, best_chain = commits, off, chain
        self.next_seq = first_seq + len(best)
        self.log_off = best_end
        self.salt = salt
        self.chain = best_chain
        return best

    def reset_log(self, first_seq: int, salt: int) -> None:
        """After a superblock names a new checkpoint, the log restarts at its start
        with commit ``first_seq`` chained to ``salt``; whatever older bytes are
        there fail the chain and end every replay."""
        self.log_off = 0
        self.next_seq = first_seq
        self.salt = self.chain = salt
        self.stale = False

    @staticmethod
    def new_salt() -> int:
        return secrets.randbits(32)

    # ---- checkpoint blobs --------------------------------------------------------
    @staticmethod
    def write_blobs(targets: list, pseg: int, pieces, head) -> None:
        """Writes one blob to several drives at once: ``targets`` = [(drive, byte
        offsets of its PSEGs)], ``pieces`` = the blob's bytes in order, ``head()``
        = its first bytes, written over the start last (format.CheckpointBlob).
        Pieces are gathered into bounded writes, so the blob is never whole in
        memory, and every copy gets the same bytes from one pass over them."""
        buf = bytearray(WRITE_CHUNK)
        mv = memoryview(buf)
        pos, fill = 0, 0                   # blob offset of buf[0], bytes in buf

        def put(data: memoryview, at: int) -> None:
            done = 0
            while done < len(data):
                i, o = divmod(at + done, pseg)
                k = min(pseg - o, len(data) - done)
                for drive, offsets in targets:
                    drive.pwrite(offsets[i] + o, data[done:done + k])
                done += k

        for p in pieces:
            p = memoryview(p).cast("B")
            if fill + len(p) > len(buf):
                put(mv[:fill], pos)
                pos, fill = pos + fill, 0
            if len(p) >= len(buf):
                put(p, pos)
                pos += len(p)
            else:
                mv[fill:fill + len(p)] = p
                fill += len(p)
        put(mv[:fill], pos)
        put(memoryview(head()), 0)
        for drive, _ in targets:
            drive.fsync()

    @staticmethod
    def blob_reader(drive, offsets: list[int], pseg: int, length: int):
        """``readinto(buf)``: fills ``buf`` with the next bytes of a blob laid out over
        PSEGs (write_blobs), from its start; never more than ``length`` in all."""
        pos = 0

        def readinto(buf) -> None:
            nonlocal pos
            mv = memoryview(buf).cast("B")
            if pos + len(mv) > min(length, len(offsets) * pseg):
                raise Corrupt("checkpoint: shorter than its superblock says")
            done = 0
            while done < len(mv):
                i, o = divmod(pos, pseg)
                k = min(pseg - o, len(mv) - done)
                drive.readinto(offsets[i] + o, mv[done:done + k])
                pos, done = pos + k, done + k
        return readinto
