"""`vsand demo`: the engine end to end on simulated drives — create a pool and a
RAID5 LUN on first run, write a stamped pattern, flush, close, reopen, read back.
(The daemon that serves LUNs over NBD replaces this as `make run`'s target.)"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

from ..disk.check import check_paths
from ..disk.pool import Pool
from ..units import GiB, MiB, format_size, parse_size
from .check import drive_paths


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="vsand demo", description=__doc__)
    ap.add_argument("--state-dir", default="var/demo")
    ap.add_argument("--drives", type=int, default=8)
    ap.add_argument("--drive-size", default="4G")
    args = ap.parse_args(argv)
    paths = drive_paths(args.state_dir)
    if not paths:
        size = parse_size(args.drive_size)
        specs = [(os.path.join(args.state_dir, "drives", f"drive-{i:02d}.img"), size, "default")
                 for i in range(args.drives)]
        pool = Pool.create(specs)
        pool.create_ld("demo", 4 * GiB, raid=5)
        print(f"created pool of {args.drives} x {format_size(size)} sparse drives under {args.state_dir}/drives")
        pool.close()
        paths = drive_paths(args.state_dir)
    t0 = time.perf_counter()
    pool = Pool.open(paths)
    print(f"opened pool in {1000 * (time.perf_counter() - t0):.1f} ms ({pool.replayed} log records replayed)")
    ld = pool.get("demo")
    stamp = f"vsand demo {time.strftime('%Y-%m-%d %H:%M:%S')}".encode()
    block = (stamp * (4 * MiB // len(stamp) + 1))[: 3 * MiB + 4096]
    off = 1 * GiB + 12345
    ld.write(off, block)
    pool.flush()
    want = hashlib.sha256(block).hexdigest()
    pool.close()
    pool = Pool.open(paths)
    got = hashlib.sha256(pool.get("demo").read(off, len(block))).hexdigest()
    st = pool.status()
    pool.close()
    print(f"wrote {len(block)} bytes at {off}, restarted, read back: {'OK' if got == want else 'MISMATCH'}")
    print(f"{'LD':<10}{'RAID':>5}{'size':>12}{'allocated':>12}")
    for d in st["lds"]:
        print(f"{d['name']:<10}{d['raid']:>5}{format_size(d['size']):>12}{format_size(d['allocated']):>12}")
    print(f"pool free: {format_size(st['free_bytes'])} on {len(st['drives'])} drives")
    problems = check_paths(paths)
    print("checker:", "clean" if not problems else "; ".join(problems))
    return 0 if got == want and not problems else 1
