"""The status page's JSON helpers (vsand/web/view.py): PSEG runs, LD trees, drive words."""

from __future__ import annotations

import numpy as np

from vsand.web.view import FAILED, FREE, REBUILDING, USED, drive_status, runs, trees


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
