#!/usr/bin/env python3
"""NBD throughput: vsand (RAID0 and RAID5 LUNs) vs `nbdkit file` vs `qemu-nbd -f qcow2`,
in one run, with fio's nbd engine over UNIX sockets. Prints IOPS / MiB/s and the
ratio of each target to nbdkit-file.

Jobs: 4K random read QD32, 4K random write QD32, 1 MiB sequential read QD8,
1 MiB sequential write QD8, each over a --size area (default 1 GiB) that is
written once beforehand so reads hit data. Targets (issue #3): RAID0 4K random
read >= 1.0x nbdkit-file, random write >= 0.8x, 1 MiB sequential >= 0.8x.

Targets vsand-direct-raid0 and vsand-direct-raid5 are a second vsand with its image
files opened O_DIRECT (``--io direct``), started only when asked for; --jobs picks
jobs by name, among them 4k-randread-qd1 and 4k-randwrite-qd1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vsand.control.client import ControlError, call  # noqa: E402
from benchlib import fio, wait_for  # noqa: E402
from vsand.units import parse_size  # noqa: E402

JOBS = [("4k-randread", "randread", "4k", 32), ("4k-randwrite", "randwrite", "4k", 32),
        ("1m-seqread", "read", "1m", 8), ("1m-seqwrite", "write", "1m", 8)]
MORE_JOBS = [("4k-randread-qd1", "randread", "4k", 1), ("4k-randwrite-qd1", "randwrite", "4k", 1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runtime", type=int, default=10)
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/var/tmp"))
    ap.add_argument("--targets", default="nbdkit-file,qemu-nbd-qcow2,vsand-raid0,vsand-raid5",
                    help="also vsand-direct-raid0, vsand-direct-raid5 (drives opened O_DIRECT)")
    ap.add_argument("--jobs", default=",".join(n for n, *_ in JOBS),
                    help="job names: " + ", ".join(n for n, *_ in JOBS + MORE_JOBS))
    args = ap.parse_args()
    jobs = [j for j in JOBS + MORE_JOBS if j[0] in args.jobs.split(",")]
    for tool in ("fio", "nbdkit", "qemu-nbd", "qemu-img"):
        if not shutil.which(tool):
            print(f"{tool} is missing (make test installs it as root)", file=sys.stderr)
            return 2
    size = parse_size(args.size)
    work = tempfile.mkdtemp(prefix="bench-nbd-", dir=args.dir)
    procs: list[subprocess.Popen] = []
    uris: dict[str, str] = {}
    try:
        raw = os.path.join(work, "disk.raw")
        with open(raw, "wb") as f:
            f.truncate(size)
        sock = os.path.join(work, "nbdkit.sock")
        procs.append(subprocess.Popen(["nbdkit", "-f", "-U", sock, "file", raw]))
        wait_for(sock, procs[-1])
        uris["nbdkit-file"] = f"nbd+unix:///?socket={sock}"
        q = os.path.join(work, "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", q, str(size)], check=True)
        qs = os.path.join(work, "qemu.sock")
        procs.append(subprocess.Popen(["qemu-nbd", "-f", "qcow2", "-k", qs, "--cache=writeback",
                                       "--aio=threads", "-t", "--shared=8", q]))
        wait_for(qs, procs[-1])
        uris["qemu-nbd-qcow2"] = f"nbd+unix:///?socket={qs}"
        for kind, io in (("vsand", "auto"), ("vsand-direct", "direct")):
            if kind == "vsand-direct" and not any(t.startswith("vsand-direct-") for t in args.targets.split(",")):
                continue
            state = os.path.join(work, kind)
            vs = subprocess.Popen([sys.executable, "-m", "vsand", "--state-dir", state, "--drives", "8",
                                   "--drive-size", str(max(size, 1 << 30)), "--listen", "none",
                                   "--log-level", "warning", "--io", io])
            procs.append(vs)
            wait_for(os.path.join(state, "control.sock"), vs)
            time.sleep(0.2)
            for raid in (0, 5):
                call(os.path.join(state, "control.sock"), "lun.create", name=f"r{raid}", size=size, raid=raid)
                uris[f"{kind}-raid{raid}"] = f"nbd+unix:///r{raid}?socket={os.path.join(state, 'nbd.sock')}"
        targets = [t for t in args.targets.split(",") if t in uris]
        for t in targets:   # lay the data down once so reads hit allocated data
            fio(uris[t], "write", "1m", 8, size, 0)
        results: dict[str, dict[str, dict]] = {t: {} for t in targets}
        for name, rw, bs, qd in jobs:
            for t in targets:
                results[t][name] = fio(uris[t], rw, bs, qd, size, args.runtime)
        print(f"\n{'target':<20}" + "".join(f"{n:>22}" for n, *_ in jobs))
        for t in targets:
            row = f"{t:<20}"
            for name, _, bs, _ in jobs:
                r = results[t][name]
                val = f"{r['iops'] / 1000:.1f}k IOPS" if bs == "4k" else f"{r['mibs']:.0f} MiB/s"
                base = results.get("nbdkit-file", {}).get(name)
                ratio = (r["iops"] / base["iops"]) if base and base["iops"] else 0
                row += f"{val + f' ({ratio:.2f}x)':>22}"
            print(row)
        print("\nratios are against nbdkit-file; p99 latency (us):")
        for t in targets:
            print(f"{t:<20}" + "".join(f"{results[t][n]['p99_us']:>22.0f}" for n, *_ in jobs))
        return 0
    except (RuntimeError, ControlError) as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
