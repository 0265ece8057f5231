"""`vsand check STATE_DIR`: the offline checker.

Exit codes: 0 clean; 1 problems (one line each: an inconsistency, or data no
redundancy can read); 2 the check could not run (usage, the pool is in use by a
daemon); 3 degraded but consistent (failed or missing drives whose data the
other drives still cover).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

from .. import backends
from ..config import load
from ..disk.check import check_report
from ..errors import Busy, VsanError

CLEAN, PROBLEMS, CANNOT, DEGRADED = 0, 1, 2, 3


def drive_paths(state_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(state_dir, "drives", "*.img")))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="vsand check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("state_dir", nargs="?", help="state directory (drives under DIR/drives/*.img)")
    ap.add_argument("--drive", action="append", default=[], help="drive path (repeatable)")
    ap.add_argument("--parity", action="store_true", help="also verify RAID redundancy of every allocated segment")
    ap.add_argument("--config", metavar="FILE",
                    help="the daemon's config file: check the pool of its backend (e.g. rados) "
                         "instead of drive files")
    ap.add_argument("--live", action="store_true",
                    help="check a pool a daemon has open (no lock): what is read may be half-written, "
                         "so problems found this way may not be real")
    args = ap.parse_args(argv)
    paths = list(args.drive)
    if args.state_dir:
        paths += drive_paths(args.state_dir)
    backend = None
    try:
        if args.config:
            cfg = load(["--config", args.config])
            if cfg.backend != "files":
                backend = backends.load(cfg.backend).from_config(cfg)
                backend.inspect(live=args.live)
                paths = backend.paths(0)
        if not paths:
            print("vsand check: no drives found (give STATE_DIR, --drive or --config)", file=sys.stderr)
            return CANNOT
        rep = check_report(paths, parity=args.parity, live=args.live,
                           drive_factory=backend.open_drive if backend else None)
    except Busy as e:
        print(f"vsand check: the pool is in use: {e.message}; stop that daemon first, or add "
              f"--live to read a pool that may be changing", file=sys.stderr)
        return CANNOT
    except VsanError as e:
        print(f"vsand check: {e.message}", file=sys.stderr)
        return CANNOT
    finally:
        if backend is not None:
            backend.close(release=False)
    for line in rep.notes:
        print(f"note: {line}")
    for line in rep.degraded:
        print(f"degraded: {line}")
    for line in rep.problems:
        print(line)
    if rep.problems:
        return PROBLEMS
    if rep.degraded:
        print(f"degraded: {len(rep.degraded)} drive(s) failed or missing; the data is still "
              f"readable through redundancy")
        return DEGRADED
    print(f"clean: {len(paths)} drives")
    return CLEAN
