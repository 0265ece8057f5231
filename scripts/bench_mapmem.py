#!/usr/bin/env python3
"""RAM cost of the maps: map a 2 TiB LUN fully (thick) on sparse drives and print
bytes of RAM per mapped MiB, for RAID 0, 1 and 5. Budget (DESIGN.md §6): <= 8.

Two figures per RAID type:
- arrays:  LMAP + RSD table bytes (what the maps are made of);
- traced:  every byte still allocated after mapping, as tracemalloc sees it
           (numpy arrays, Python objects, lists, caches), minus the free maps,
           which scale with raw capacity, not with what is mapped.
Also: time to map, checkpoint size, and start-up (recovery) time.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vsand.disk.pool import Pool  # noqa: E402
from vsand.units import GiB, MiB, TiB, parse_size  # noqa: E402


def run(raid: int, size: int, workdir: str) -> dict:
    d = tempfile.mkdtemp(prefix=f"mapmem-r{raid}-", dir=workdir)
    try:
        raw = size * {0: 1.0, 1: 2.0, 5: 1.25}[raid]
        drive = int(raw / 8 * 1.05) // GiB * GiB + 2 * GiB
        specs = [(os.path.join(d, f"d{i}.img"), drive, "default") for i in range(8)]
        pool = Pool.create(specs)
        gc.collect()
        free_maps = sum(ds.used.nbytes for ds in pool.allocator.drives.values())
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        ld = pool.create_ld("big", size, raid=raid, thick=True)
        t_map = time.perf_counter() - t0
        pool.space._members.clear()  # an I/O cache, bounded, not part of the map
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        mapped_mib = ld.allocated_segments()
        arrays = pool.map_bytes()
        pool.close()
        t0 = time.perf_counter()
        pool = Pool.open([s[0] for s in specs])
        t_open = time.perf_counter() - t0
        ck = pool.ckpt["len"]
        pool.close()
        del free_maps
        return {"raid": raid, "mapped_mib": mapped_mib, "arrays_per_mib": arrays / mapped_mib,
                "traced_per_mib": traced / mapped_mib, "map_s": t_map, "open_s": t_open,
                "checkpoint_mib": ck / MiB}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2T", help="LUN size (default 2T)")
    ap.add_argument("--raid", default="0,1,5")
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/var/tmp"),
                    help="where the sparse drive images go")
    args = ap.parse_args()
    size = parse_size(args.size)
    worst = 0.0
    print(f"{'RAID':>4} {'mapped':>10} {'arrays B/MiB':>13} {'traced B/MiB':>13} {'map s':>7} {'open s':>7} {'ckpt MiB':>9}")
    for raid in [int(x) for x in args.raid.split(",")]:
        r = run(raid, size, args.dir)
        worst = max(worst, r["traced_per_mib"])
        print(f"{raid:>4} {r['mapped_mib'] / (TiB // MiB):>8.2f}Ti {r['arrays_per_mib']:>13.2f} "
              f"{r['traced_per_mib']:>13.2f} {r['map_s']:>7.1f} {r['open_s']:>7.2f} {r['checkpoint_mib']:>9.1f}")
    print(f"worst RAM per mapped MiB: {worst:.2f} bytes (budget 8): {'OK' if worst <= 8 else 'OVER'}")
    return 0 if worst <= 8 else 1


if __name__ == "__main__":
    sys.exit(main())
