"""The maps' RAM (DESIGN.md §6, issue 11): a thick create, its commits, a checkpoint
and a start-up hold neither per-segment Python objects nor a second copy of the
maps. Measured with tracemalloc, which sees every Python and numpy allocation; the
RSS figures of a 2 TiB LUN are scripts/bench_mapmem.py's."""

from __future__ import annotations

import gc
import os
import tracemalloc

import pytest

import vsand.disk.pool as pool_module
import vsand.disk.transactions as tx_module
from poolkit import make_pool
from vsand.disk.check import check_paths, check_pool
from vsand.disk.journal import Journal
from vsand.disk.pool import Pool
from vsand.errors import IOFailure
from vsand.mapping.rsd import RsdTable
from vsand.units import GiB, KiB, MiB, Units

UNITS = Units(quorum=8 * MiB)
SIZE = 128 * GiB          # maps of 768 KiB (RAID0): well above the fixed buffers


class Traced:
    """Peak of traced memory above what was allocated on entry."""

    def __enter__(self):
        gc.collect()
        tracemalloc.reset_peak()
        self.base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc):
        self.peak = tracemalloc.get_traced_memory()[1] - self.base


@pytest.fixture
def traced():
    tracemalloc.start()
    yield
    tracemalloc.stop()


def drives(tmp_path, name: str) -> list[tuple[str, int, str]]:
    size = SIZE // 8 + SIZE // 64 + 2 * GiB
    return [(os.path.join(str(tmp_path), f"{name}{i}.img"), size, "default") for i in range(8)]


def test_thick_create_checkpoint_and_start_up_hold_the_maps_once(tmp_path, traced):
    # The first pool runs every code path once, so lazy imports are not counted.
    warm = Pool.create(drives(tmp_path, "w"), UNITS)
    warm.create_ld("x", 4 * GiB, raid=0, thick=True)
    warm.close()
    Pool.open([p for p, _, _ in drives(tmp_path, "w")]).close()

    pool = Pool.create(drives(tmp_path, "d"), UNITS)
    with Traced() as t:
        pool.create_ld("big", SIZE, raid=0, thick=True)
    maps = pool.map_bytes()
    assert maps == SIZE // MiB * 6
    # Before: one record dict per RStore and the whole commit packed in memory.
    assert t.peak < maps + 512 * KiB, (t.peak, maps)
    with Traced() as t:
        pool.checkpoint()
    assert t.peak < 512 * KiB, t.peak          # streamed from the arrays, never joined
    pool.close()
    del pool
    with Traced() as t:
        pool = Pool.open([p for p, _, _ in drives(tmp_path, "d")])
    free_maps = sum(ds.used.nbytes for ds in pool.allocator.drives.values())
    assert pool.map_bytes() == maps
    # Before: the blob, its payload copy, the decoded bytes and the arrays at once.
    assert t.peak < maps + free_maps + 768 * KiB, (t.peak, maps, free_maps)
    assert pool.get("big").allocated_segments() == SIZE // MiB
    pool.close()


def test_rstore_records_wait_as_ranges_and_build_as_before():
    """A thick create adds an RStore per 8 segments: the journal keeps index ranges,
    and a commit builds exactly the "rsa" records it used to keep, in order."""
    t = RsdTable(5, "default")
    j = Journal()
    members = lambda i: [i, i + 1, i + 2, i + 3, i + 4]  # noqa: E731
    added = [t.add(members(i)) for i in range(3000)]
    for i in added:
        j.add_rstore(t, i)
    assert len(j.records) == 1                          # not one record per RStore
    j.add({"t": "task", "drop": 7})
    for i in (2999, 2998, 2997):                        # indices reused from the top down
        t.remove(i)
    t.free_ids = [2997, 2998, 2999]
    again = []
    for _ in range(3):
        i = t.add([9, 9, 9, 9, 9])
        j.add_rstore(t, i)
        again.append(i)
    assert again == [2999, 2998, 2997] and len(j.records) == 3
    assert j.estimate({}) > 3000 * 100
    records, mark = j.build({})
    rsa = lambda i: {"t": "rsa", "raid": 5, "ldad": "default", "i": i, "m": t.members(i)}  # noqa: E731
    assert records == [rsa(i) for i in range(3000)] + [{"t": "task", "drop": 7}] \
        + [rsa(i) for i in (2997, 2998, 2999)]
    j.add_rstore(t, t.add([1, 2, 3, 4, 5]))            # after a build: a record of its own
    assert len(j.records) == 4
    j.committed(mark)
    assert len(j.records) == 1


def thick_create_crashing_before_done(pool, name: str, size: int) -> None:
    """create_ld as a kill -9 at ``create.before_done`` leaves it: the drives are
    closed where they stand, nothing else is written."""
    class Killed(Exception):
        pass

    def crash(point):
        if point == "create.before_done":
            raise Killed
    saved = pool_module.crashpoint
    pool_module.crashpoint = crash
    try:
        with pytest.raises(Killed):
            pool.create_ld(name, size, raid=5, thick=True)
    finally:
        pool_module.crashpoint = saved
    for d in pool.drives.values():
        d.close()


def test_a_big_change_set_is_made_durable_by_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(tx_module, "BIG_COMMIT", 16 * KiB)
    pool, paths = make_pool(tmp_path)
    lun = pool.create_ld("lun", 64 * MiB, raid=1)
    lun.write(5 * MiB, b"a" * 4096)
    seq = pool.ckpt["seq"] if pool.ckpt else 0
    commits = pool.tx.commits
    pool.flush()                                        # small: the log
    assert pool.tx.commits == commits + 1 and (pool.ckpt["seq"] if pool.ckpt else 0) == seq
    pool.create_ld("thick", 128 * MiB, raid=5, thick=True)
    assert pool.ckpt["seq"] > seq                       # its allocation went as a checkpoint
    pool.get("thick").write(0, b"b" * MiB)
    pool.flush()
    for d in pool.drives.values():                      # crash: no closing checkpoint
        d.close()
    pool = Pool.open(paths)
    assert pool.get("thick").allocated_segments() == 128 and pool.get("thick").read(0, 2) == b"bb"
    assert pool.get("lun").read(5 * MiB, 4096) == b"a" * 4096
    assert check_pool(pool) == []
    # A thick create cut short after its allocation's checkpoint is gone at the next
    # start, and the space it had allocated takes the same LD again.
    thick_create_crashing_before_done(pool, "cut", 256 * MiB)
    pool = Pool.open(paths)
    assert "cut" not in pool.lds
    assert check_pool(pool) == []
    pool.create_ld("cut", 256 * MiB, raid=5, thick=True)
    pool.close()
    assert check_paths(paths) == []


def test_a_failed_data_sync_before_a_big_commit_changes_nothing(tmp_path, monkeypatch):
    """As for a commit into the log: the flush fails, the pool stays writable and the
    next flush makes everything durable."""
    monkeypatch.setattr(tx_module, "BIG_COMMIT", 16 * KiB)
    pool, paths = make_pool(tmp_path)
    ld = pool.create_ld("x", 64 * MiB, raid=0)
    ld.write(0, b"c" * 40 * MiB)
    real = pool.sync_data

    def failing():
        pool.sync_data = real
        raise IOFailure("injected: fdatasync failed")
    pool.sync_data = failing
    with pytest.raises(IOFailure, match="injected"):
        pool.flush()
    assert pool.tx.failed is None and not pool.journal.empty()
    pool.flush()
    assert pool.journal.empty()
    for d in pool.drives.values():
        d.close()
    pool = Pool.open(paths)
    assert pool.get("x").read(39 * MiB, 3) == b"ccc"
    pool.close()
