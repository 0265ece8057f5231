"""The status page's JSON helpers (vsand/web/view.py): PSEG runs, LD trees, drive words."""

from __future__ import annotations

import numpy as np

from poolkit import make_pool
from vsand.disk.rebuild import survey
from vsand.units import MiB
from vsand.web.view import FAILED, FREE, REBUILDING, USED, drive_status, pseg_states, runs, trees


def test_runs_merge_neighbours_and_cover_every_pseg():
    codes = np.array([USED] * 3 + [FREE] * 1000 + [FAILED] + [REBUILDING] * 2 + [FREE], dtype=np.uint8)
    assert runs(codes) == [[USED, 3], [FREE, 1000], [FAILED, 1], [REBUILDING, 2], [FREE, 1]]
    assert runs(np.zeros(5, dtype=np.uint8)) == [[FREE, 5]]
    assert runs(np.zeros(0, dtype=np.uint8)) == []


def ld(i, name, origin=None, kind="snapshot"):
    return {"id": i, "name": name, "origin": origin, "kind": kind}


def shape(nodes):
    return [(n["name"], shape(n["children"])) for n in nodes]


def test_trees_hang_snapshots_and_clones_under_their_origin_oldest_first():
    lds = [ld(4, "c1", "s1", "snapclone"), ld(1, "a", kind="lun"), ld(3, "s2", "a"),
           ld(2, "s1", "a"), ld(5, "b", kind="lun"), ld(6, "orphan", "gone")]
    assert shape(trees(lds)) == [("a", [("s1", [("c1", [])]), ("s2", [])]), ("b", []), ("orphan", [])]


def test_a_cycle_of_origins_still_draws_every_ld_once():
    lds = [ld(1, "x", "y"), ld(2, "y", "x"), ld(3, "z", "x")]
    out = shape(trees(lds))
    assert out == [("x", [("z", [])]), ("y", [])]


def row(state="ok", failed=False, left=0):
    return {"state": state, "failed": failed, "rebuild_left": left}


def test_drive_status_words():
    assert drive_status(row(), True) == "ok"
    assert drive_status(row("failed: I/O errors", True, 3), False) == "failed"
    assert drive_status(row("failed: I/O errors", True, 3), True) == "rebuilding"
    assert drive_status(row("failed: I/O errors", True, 0), True) == "failed"
    assert drive_status(row("leaving", False, 2), True) == "rebuilding"
    assert drive_status(row("leaving", False, 0), False) == "leaving"
    assert drive_status(row("removed", False, 0), True) == "removed"


def test_rebuilding_psegs_are_those_the_survey_lists(tmp_path):
    """In bulk, the PSEGs marked rebuilding on a failed drive and on one being removed
    are those of the survey's columns (RAID1 partners included); the rest of those
    drives' used PSEGs are failed or used."""
    pool, _ = make_pool(tmp_path, n=10)
    try:
        for raid in (0, 1, 5):
            pool.create_ld(f"r{raid}", 24 * MiB, raid=raid, thick=True)
        pool.remove_drive(5)
        pool.fail_drive(3)
        want = {3: set(), 5: set()}
        for t, idx, col in survey(pool).todo:
            m = np.array([t.members(idx)[col]], dtype=np.uint32)
            for d, p in pool.space.physical_rows(t.raid, m):
                if d in want:
                    want[d].add(p)
        assert want[3] and want[5]
        states = pseg_states(pool, True)
        for d, psegs in want.items():
            assert set(np.flatnonzero(states[d] == REBUILDING).tolist()) == psegs
        assert set(np.flatnonzero(pseg_states(pool, False)[3] == FAILED).tolist()) >= want[3]
        assert not any((s == REBUILDING).any() for s in pseg_states(pool, False).values())
    finally:
        pool.close()
