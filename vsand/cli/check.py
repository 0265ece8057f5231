"""`vsand check STATE_DIR`: offline checker; exit 0 when clean, 1 with one line per problem."""

from __future__ import annotations

import argparse
import glob
import os
import sys

from ..disk.check import check_paths


def drive_paths(state_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(state_dir, "drives", "*.img")))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="vsand check", description=__doc__)
    ap.add_argument("state_dir", nargs="?", help="state directory (drives under DIR/drives/*.img)")
    ap.add_argument("--drive", action="append", default=[], help="drive path (repeatable)")
    ap.add_argument("--parity", action="store_true", help="also verify RAID redundancy of every allocated segment")
    args = ap.parse_args(argv)
    paths = list(args.drive)
    if args.state_dir:
        paths += drive_paths(args.state_dir)
    if not paths:
        print("vsand check: no drives found (give STATE_DIR or --drive)", file=sys.stderr)
        return 2
    problems = check_paths(paths, parity=args.parity)
    for p in problems:
        print(p)
    if not problems:
        print(f"clean: {len(paths)} drives")
    return 1 if problems else 0
