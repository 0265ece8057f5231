#!/usr/bin/env python3
"""What building the status page's JSON (vsand/web/view.py, the work /api/status and
/events put on the daemon's event loop) costs on a big pool: DRIVES sparse drives of
SIZE (default 8 of 128 GiB), LUNS thick RAID5 LUNs of LUN each (default one of
600 GiB; an LD holds 2 TiB at most) filling most of them, timed healthy, then with one drive failed while the rebuild task runs
(every column still to rebuild: the PSEG map's "rebuilding" states and `drive
list`'s counts). Besides the whole build: ``pseg_states`` and the drive rows alone.

The pool is real (vsand.disk.pool, no I/O beyond its metadata: thick placement writes
no data); the NBD server and task runner are stand-ins holding what the page reads
of them (no connections, one running rebuild task or none), so the figures are the
pool's part, which grows with the drives. ``--src DIR`` times the vsand package
found in DIR instead (e.g. an older commit: ``git archive REV vsand | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--drives", type=int, default=8)
    ap.add_argument("--size", default="128G", help="each drive's size (sparse files)")
    ap.add_argument("--lun", default="600G", help="each thick RAID5 LUN's size")
    ap.add_argument("--luns", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7, help="builds timed per case (the median is shown)")
    ap.add_argument("--dir", default=None, help="where the drive files go (a temporary directory)")
    ap.add_argument("--src", default=None, help="time the vsand package in DIR instead of this tree's")
    return ap.parse_args()


class Tasks:
    """What the page reads of the task runner: its tasks, one rebuild running or none."""

    def __init__(self):
        self.tasks: dict = {}
        self.rows: list[dict] = []

    def list_tasks(self) -> list[dict]:
        return self.rows

    def rebuilding(self, on: bool) -> None:
        self.rows = [{"id": 1, "kind": "rebuild", "target": "pool", "state": "running", "phase": "rebuild",
                      "done": 0, "total": 1, "mib_s": 0, "eta": None}] if on else []


def timed(fn, rounds: int) -> tuple[float, float]:
    """(median, most) milliseconds of ``rounds`` calls."""
    ms = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ms), max(ms)


def main() -> None:
    a = parse()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    sys.path.insert(0, os.path.abspath(a.src) if a.src else root)
    from vsand.config import Config
    from vsand.disk import membership
    from vsand.disk.pool import Pool
    from vsand.units import Units, parse_size
    from vsand.web import view
    import vsand

    print(f"vsand from {os.path.dirname(vsand.__file__)}")
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        specs = [(os.path.join(d, f"d{i:02d}.img"), parse_size(a.size), "default") for i in range(a.drives)]
        pool = Pool.create(specs, Units())
        try:
            t = time.perf_counter()
            for i in range(a.luns):
                pool.create_ld(f"big{i}", parse_size(a.lun), raid=5, thick=True)
            print(f"{a.drives} drives of {a.size}, {pool.allocator.drives[0].npsegs} PSEGs each; "
                  f"{a.luns} thick RAID5 LUN(s) of {a.lun} made in {time.perf_counter() - t:.1f} s")
            tasks = Tasks()
            nbd = SimpleNamespace(connections={}, budget=SimpleNamespace(total=0, used=0))
            daemon = SimpleNamespace(pool=pool, nbd=nbd, tasks=tasks, cfg=Config())

            def case(name: str, rebuilding: bool) -> None:
                tasks.rebuilding(rebuilding)
                size = len(json.dumps(view.build(daemon), separators=(",", ":"), default=str))
                whole = timed(lambda: json.dumps(view.build(daemon), separators=(",", ":"), default=str),
                              a.rounds)
                states = timed(lambda: view.pseg_states(pool, rebuilding), a.rounds)
                rows = timed(lambda: membership.rows(pool), a.rounds)
                print(f"{name:28s} build {whole[0]:7.1f} ms (max {whole[1]:7.1f}) | pseg_states "
                      f"{states[0]:6.1f} ms | drive rows {rows[0]:6.1f} ms | JSON {size} bytes")

            case("healthy", False)
            pool.fail_drive(a.drives // 2)
            columns = len(pool.damage().todo)
            case("1 failed, no rebuild task", False)
            case("1 failed, rebuild running", True)
            print(f"columns left to rebuild: {columns}")
        finally:
            pool.close()


if __name__ == "__main__":
    main()
