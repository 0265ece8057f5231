"""Failure detection (DESIGN.md §5): I/O errors counted per drive; a drive past the
limit, or one that missed a write of a redundant stripe, is failed. A drive that
``heals_itself`` (its backend is redundant, as RADOS is) is failed only for a missed
write: its other errors fail the request, not the drive.

RStoreIO reports every member call that fails (``error``). A failure recorded here
takes effect at once in memory, so the I/O that met the error is retried from
redundancy (redundancy/rstore.py), and durably with the next commit: a ``dfail``
record in the journal, like a task's state, which the FLUSH that covers the
degraded write also commits. Errors met in a worker thread (a direct drive's
write, a BGCOPY step, a read job) are counted only: the journal belongs to the
event loop, so the I/O fails with EIO there, and a read is retried on the loop,
where its error fails the drive.
"""

from __future__ import annotations

import logging
import threading

from ..errors import IOFailure

log = logging.getLogger("vsand.drives")

ERROR_LIMIT = 4         # I/O errors a drive may give before it is failed


class Detector:
    def __init__(self, pool, limit: int = ERROR_LIMIT):
        self.pool = pool
        self.limit = limit
        self.errors: dict[int, int] = {}       # drive index -> I/O errors since start
        self._loop_thread = threading.get_ident()

    def error(self, index: int, exc: IOFailure, fail: bool) -> None:
        """A member call on drive ``index`` failed; ``fail``: it missed a write that
        redundancy covers, so the drive must not be read again."""
        drive = self.pool.drives[index]
        if drive.failed:
            return
        n = self.errors[index] = self.errors.get(index, 0) + 1
        if threading.get_ident() != self._loop_thread:
            return
        if not fail and getattr(drive, "heals_itself", False):
            # its redundancy is below us (RADOS replication): an error is a stall or an
            # outage that passes, and failing it would fail a RAID0 LUN for good
            log.warning("drive %d (%s): I/O error %d (not failed: its backend keeps its own "
                        "redundancy): %s", index, drive.path, n, exc.message)
            return
        if fail or n >= self.limit:
            why = (f"missed a write ({exc.message})" if fail
                   else f"{n} I/O errors, the last: {exc.message}")
            log.warning("drive %d (%s) failed: %s; its RStores run degraded", index,
                        drive.path, why)
            self.pool.ops.drive_failed(index, why)
        else:
            log.warning("drive %d (%s): I/O error %d of %d before it is failed: %s", index,
                        drive.path, n, self.limit, exc.message)
