"""The "commit fails" rule of the stateful models (DESIGN.md §9, issue 10 item 7).

The models open every pool through one ``faultdrive.Faults`` and, in their commit
fault rule, arm an EIO on a metadata I/O of one quorum drive, run one operation
that commits, and hold the engine to the failure contract:

- **one-shot** faults (``arm``): one failed write or fsync (with ``*_then_*`` kinds,
  a second one in the first rewrite of the metadata, which is tried twice). The
  pool never turns read-only. An operation that returned is done; one that raised
  raised IOFailure and is not done: a checkpoint never raises (it rewrites), a
  flush raises only when the data sync failed, a write only when the data sync of
  a commit it needed failed or that commit's catalog operation (an invalidation)
  was not done; whatever raised changed nothing the model can see.
- a **persistent** fault (``arm_persistent``): every write to one quorum drive
  fails, so the rewrite fails too and the pool turns read-only (``tx.failed``,
  PoolReadOnly on every change, reads go on, ``needs_check`` on disk); reopened
  without the fault it runs the checker and is the model again.

``SyncWatch`` tells whether a data sync (``Pool.sync_data``) failed during the
operation: it wraps the pool object's method and only counts.
"""

from __future__ import annotations

import logging
import os
import sys

import pytest
from hypothesis import event
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from faultdrive import Faults  # noqa: E402,F401  (re-exported for the models)

from vsand.disk.pool import Pool  # noqa: E402
from vsand.errors import IOFailure, NoSpace, PoolReadOnly  # noqa: E402
from vsand.meta import format as fmt  # noqa: E402

SB_REGION = (fmt.SB_SLOT_OFF[0], fmt.SB_SLOT_OFF[1] + fmt.SB_SLOT_SIZE)

# What fails: the log append's pwrite, an fsync (the n-th on that drive: the data
# sync of a commit, or the log append's / the checkpoint's), a superblock write, a
# checkpoint blob write; or a log append and then the first rewrite's superblock /
# blob write (the rewrite is tried twice). Per kind of operation only what it can
# hit: a superblock or blob is written by a checkpoint (a plain commit meets them
# in the rewrite after a failed append), and "blob" matches every pwrite past the
# quorum area, data included, so it is never armed for an operation that writes data.
KINDS = {
    "checkpoint": ("fsync", "sb", "blob"),
    "commit": ("log", "fsync", "log_then_sb", "log_then_blob"),
    "sync": ("fsync",),          # a flush with nothing to record: only the data sync
    "data": ("log", "fsync", "log_then_sb"),
}
NTH = {"checkpoint": {"fsync": 3}, "commit": {"fsync": 3}, "data": {"fsync": 2}}

# How often the commit fault rule goes for the persistent fault instead.
PERSISTENT = st.sampled_from([False, False, False, False, True])


def fault_args(data, pool, op_kind: str) -> tuple[str, int, int]:
    """(kind, quorum drive, nth) drawn for a one-shot fault under an operation of
    ``op_kind`` (a KINDS key)."""
    kind = data.draw(st.sampled_from(KINDS[op_kind]), label="fault")
    drive = data.draw(st.sampled_from(sorted(pool.quorum_ids)), label="quorum drive")
    nth = data.draw(st.integers(1, NTH.get(op_kind, {}).get(kind, 1)), label="nth")
    return kind, drive, nth


def arm(faults: Faults, pool: Pool, kind: str, drive: int, nth: int) -> list:
    """Arms the one-shot fault; returns its rules (``rule.fired`` says if it hit)."""
    path = pool.drives[drive].path
    log_region = (fmt.LOG_OFF, pool.units.quorum)
    rules = []
    if kind.startswith("log"):
        rules.append(faults.add("pwrite", path, log_region, nth=nth))
    if kind == "fsync":
        rules.append(faults.add("fsync", path, nth=nth))
    then = 1 if kind.startswith("log_then") else nth
    if kind.endswith("sb"):
        rules.append(faults.add("pwrite", path, SB_REGION, nth=then))
    if kind.endswith("blob"):
        rules.append(faults.add("pwrite", path, (pool.units.quorum, 1 << 62), nth=then))
    return rules


def arm_persistent(faults: Faults, pool: Pool, drive: int, everything: bool) -> None:
    """Every write to quorum drive ``drive`` fails: superblocks and the log, and with
    ``everything`` the checkpoint blobs (and data) too."""
    path = pool.drives[drive].path
    region = (SB_REGION[0], 1 << 62 if everything else pool.units.quorum)
    for _ in range(256):
        faults.add("pwrite", path, region)


class SyncWatch:
    """Counts failed data syncs of the pools it watches."""

    def __init__(self):
        self.failed = 0

    def watch(self, pool: Pool) -> None:
        orig = pool.sync_data

        def sync_data():
            try:
                orig()
            except IOFailure:
                self.failed += 1
                raise
        pool.sync_data = sync_data


def check_one_shot(op: str, err: BaseException | None, pool: Pool, sync_failed: bool,
                   catalog: bool) -> None:
    """The failure contract for one operation under a one-shot fault (module doc)."""
    assert pool.tx.failed is None, f"{op}: one failed metadata I/O turned the pool read-only: {pool.tx.failed}"
    if err is None:
        return
    assert isinstance(err, IOFailure) and not isinstance(err, PoolReadOnly), \
        f"{op} raised {type(err).__name__}: {err}"
    msg = str(err)
    assert op != "checkpoint", f"a checkpoint raised though the metadata rewrite can take over: {msg}"
    if op == "flush":
        assert sync_failed, f"a flush raised though its data sync worked (the rewrite makes it durable): {msg}"
    elif catalog:
        assert sync_failed or "not done" in msg, f"{op} raised an unexpected IOFailure: {msg}"
    else:   # data path: an intent is retried; only a commit it needed may fail
        assert sync_failed or "not done" in msg, \
            f"{op} raised though a failed write intent is retried after the rewrite: {msg}"


def run_one_shot(m, data, op: str, run, catalog: bool, writes_data: bool = False) -> BaseException | None:
    """Arms a one-shot fault on the pool of machine ``m`` (which has ``pool``,
    ``faults`` and ``syncs``), runs ``run()`` (the operation, which updates the
    model only if the pool call returned) and holds the outcome to the contract;
    returns what it raised."""
    if writes_data:
        op_kind = "data"
    elif op == "checkpoint":
        op_kind = "checkpoint"
    elif op == "flush" and m.pool.journal.empty() and not m.pool.allocator.pending:
        op_kind = "sync"
    else:
        op_kind = "commit"
    kind, drive, nth = fault_args(data, m.pool, op_kind)
    rules = arm(m.faults, m.pool, kind, drive, nth)
    syncs = m.syncs.failed
    before = sorted(m.pool.lds)
    err = None
    try:
        run()
    except (IOFailure, PoolReadOnly) as e:
        err = e
    finally:
        m.faults.clear()
    fired = any(r.fired for r in rules)
    event(f"commit fault: {'fired' if fired else 'missed'}")
    if not fired:
        event(f"commit fault missed: {kind}#{nth}, {op}")
    if fired:
        event(f"commit fault fired: {kind}, {op} {'raised' if err else 'returned'}")
    check_one_shot(op, err, m.pool, m.syncs.failed > syncs, catalog)
    if err is not None:
        assert sorted(m.pool.lds) == before, \
            f"{op} raised ({err}) but changed the LDs: {before} -> {sorted(m.pool.lds)}"
    return err


def assert_read_only(pool: Pool, usable: list[str], new_name: str) -> None:
    """Every change is refused with PoolReadOnly; the caller checks the reads."""
    assert pool.tx.failed is not None, "the pool did not turn read-only"
    for name in usable[:2]:
        ld = pool.get(name)
        with pytest.raises(PoolReadOnly):
            ld.write(0, b"x")
        with pytest.raises(PoolReadOnly):
            ld.trim(0, ld.seg)
    with pytest.raises(PoolReadOnly):
        pool.create_ld(new_name, 2 * pool.units.segment, raid=0)
    with pytest.raises(PoolReadOnly):
        pool.flush()
    with pytest.raises(PoolReadOnly):
        pool.checkpoint()


def newest_superblock(pool: Pool) -> dict | None:
    """The newest valid superblock body on the pool's quorum drives, read from the
    drives themselves: the image files, or where a drive is no file, what its
    ``read_back(off, n)`` fetches from the store behind it."""
    best = None
    for d in pool.quorum_ids:
        for off in fmt.SB_SLOT_OFF:
            got = fmt.unpack_superblock(_read_back(pool, d, off, fmt.SB_SLOT_SIZE))
            if got and (best is None or got[0] > best[0]):
                best = got
    return best[1] if best else None


def _read_back(pool: Pool, d: int, off: int, n: int) -> bytes:
    read_back = getattr(pool.drives.get(d), "read_back", None)
    if read_back is not None:
        return read_back(off, n)
    fd = os.open(pool.drive_recs[d]["path"], os.O_RDONLY)
    try:
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


def drop(pool: Pool) -> None:
    """kill -9: the pool object is abandoned without a flush or checkpoint."""
    for d in pool.drives.values():
        d.close()
    pool.closed = True


class LogLines(logging.Handler):
    """Collects the messages of the ``vsand.pool`` logger while in a ``with``."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("vsand.pool").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("vsand.pool").removeHandler(self)


def reopen_after_read_only(pool: Pool, paths: list[str], faults: Faults, clean_close: bool) -> Pool:
    """The read-only pool is stopped (close, which must not write, or kill -9), the
    fault is gone, and it is started again: the start must run the checker (the
    last run left ``needs_check``) and leave the pool writable, the flag cleared.
    A pool with one quorum copy (the RADOS backend's) has no other drive to leave
    ``needs_check`` on: its newest superblock is the last one written before the
    fault, and the start finds the pool as last committed, without a check."""
    single = len(pool.quorum_ids) == 1
    sb = newest_superblock(pool)
    if single:
        assert sb is not None and not sb.get("needs_check"), \
            "needs_check reached the only quorum drive though every write to it fails"
    else:
        assert sb is not None and sb.get("needs_check"), \
            f"the pool turned read-only but the newest superblock has no needs_check: {sb and sorted(sb)}"
    faults.clear()
    if clean_close:
        pool.close()
    else:
        drop(pool)
    with LogLines() as lines:
        new = Pool.open(paths, drive_factory=faults.open)
    if not single:
        assert any("checks clean" in m for m in lines.lines), \
            f"the start after a read-only run did not run the checker: {lines.lines}"
    assert new.tx.failed is None and new.tx.needs_check is None
    sb = newest_superblock(new)
    assert sb is not None and not sb.get("needs_check"), "needs_check still set after a clean check"
    return new


def kill_now(pool: Pool, paths: list[str], faults: Faults) -> Pool:
    """kill -9 right after an operation, and the start that follows: with nothing
    left to record the drives must hold the pool as it is, else a flush first
    makes them (what a client's FLUSH before the kill would have done)."""
    if not pool.journal.empty():
        pool.flush()
    drop(pool)
    return Pool.open(paths, drive_factory=faults.open)


def refused_read_only(op: str, attempts: dict, fallback: str, tight: bool) -> str:
    """Runs ``attempts[op]()`` while every write to a quorum drive fails: it must
    raise PoolReadOnly. On a tight pool an operation that takes space (a create, a
    snapshot, a clone) may be refused with NoSpace before it commits; then ``attempts[fallback]`` (a setting, which
    only commits) must raise PoolReadOnly instead. Returns the operation that did."""
    try:
        attempts[op]()
    except PoolReadOnly:
        return op
    except NoSpace:
        assert tight and op in ("create", "snapshot", "clone"), f"{op} raised NoSpace (tight pool: {tight})"
        with pytest.raises(PoolReadOnly):
            attempts[fallback]()
        return fallback
    raise AssertionError(f"{op} returned though every write to a quorum drive fails")
