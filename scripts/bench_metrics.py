#!/usr/bin/env python3
"""What metrics cost the NBD data path (issue 14): warm 4K random read and write IOPS
(QD32, fio's nbd engine over UNIX sockets) of the same RAID0 LUN with metrics off
(no --metrics) and on (--metrics, scraped every --scrape seconds while fio runs),
and of the code before the counters existed (--before REV, the vsand package of that
commit) for the cost of the counters themselves, which metrics-off pays as well;
nbdkit's memory plugin and qemu-nbd on a raw file for reference. Besides IOPS, each
server's CPU time per request (from /proc/PID/stat around each run), which a busy
shared machine disturbs less.

The targets run in turn within each of --rounds rounds (this machine's speed drifts
from minute to minute), each round starting one target further on (every other one backwards), and a figure is
the median round. Ratios: metrics-on against
metrics-off (target: within 5 %), and each target against nbdkit-memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from benchlib import Servers, Vsand, export_tree, fio, tree_state  # noqa: E402
from vsand.units import parse_size  # noqa: E402

JOBS = [("4k-randread", "randread"), ("4k-randwrite", "randwrite")]
OFF, ON, BEFORE = "vsand-metrics-off", "vsand-metrics-on", "vsand-before"
NBDKIT, QEMU = "nbdkit-memory", "qemu-nbd-file"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_vsand(srv: Servers, state: str, size: int, extra: list[str], src: str | None = None) -> tuple[Vsand, int]:
    v = Vsand(state)
    env = None
    if src:     # PYTHONPATH comes before the editable install's finder
        env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    p = srv.spawn([sys.executable, "-m", "vsand", "--state-dir", state, "--drives", "4",
               "--drive-size", str(max(size, 1 << 30)), "--listen", "none",
               "--log-level", "warning", *extra], v.control, env=env)
    time.sleep(0.2)     # the control socket appears a moment before the daemon answers
    v.call("lun.create", name="r0", size=size, raid=0)
    return v, p.pid


class Scraper(threading.Thread):
    """Fetches /metrics every ``every`` seconds, as Prometheus would (more often)."""

    def __init__(self, url: str, every: float):
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.halt = threading.Event()
        self.scrapes = 0
        self.bytes = 0

    def run(self) -> None:
        while not self.halt.wait(self.every):
            with urllib.request.urlopen(self.url, timeout=10) as r:
                self.bytes = len(r.read())
            self.scrapes += 1


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256M", help="LUN / image size, written once before the runs")
    ap.add_argument("--runtime", type=int, default=5, help="seconds per fio run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scrape", type=float, default=1.0, help="seconds between scrapes (metrics on)")
    ap.add_argument("--before", default="main",
                    help="git revision whose vsand runs as vsand-before ('' to leave it out)")
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/var/tmp"))
    args = ap.parse_args()
    for tool in ("fio", "nbdkit", "qemu-nbd"):
        if not shutil.which(tool):
            print(f"{tool} is missing (make test installs it as root)", file=sys.stderr)
            return 2
    # stopped with SIGTERM (or SIGINT, which a background shell job ignores): the
    # servers are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    size = parse_size(args.size)
    work = tempfile.mkdtemp(prefix="bench-metrics-", dir=args.dir)
    uris: dict[str, str] = {}
    pids: dict[str, int] = {}
    try:
        with Servers() as srv:
            sock = os.path.join(work, "nbdkit.sock")
            pids[NBDKIT] = srv.spawn(["nbdkit", "-f", "-U", sock, "memory", str(size)], sock).pid
            uris[NBDKIT] = f"nbd+unix:///?socket={sock}"
            raw = os.path.join(work, "disk.raw")
            with open(raw, "wb") as f:
                f.truncate(size)
            qs = os.path.join(work, "qemu.sock")
            pids[QEMU] = srv.spawn(["qemu-nbd", "-f", "raw", "-k", qs, "--cache=writeback",
                                    "--aio=threads", "-t", "--shared=8", raw], qs).pid
            uris[QEMU] = f"nbd+unix:///?socket={qs}"
            v, pids[OFF] = start_vsand(srv, os.path.join(work, "off"), size, [])
            uris[OFF] = v.uri("r0")
            port = free_port()
            v, pids[ON] = start_vsand(srv, os.path.join(work, "on"), size, ["--metrics", f"127.0.0.1:{port}"])
            uris[ON] = v.uri("r0")
            before = ""
            if args.before:
                src = os.path.join(work, "before-src")
                before = export_tree(ROOT, args.before, src)
                v, pids[BEFORE] = start_vsand(srv, os.path.join(work, "before"), size, [], src)
                uris[BEFORE] = v.uri("r0")
            scraper = Scraper(f"http://127.0.0.1:{port}/metrics", args.scrape)
            scraper.start()
            for t, uri in uris.items():      # lay the data down once: reads hit written data
                fio(uri, "write", "1m", 8, size, 0)
            runs: dict[str, dict[str, list[float]]] = {j: {t: [] for t in uris} for j, _ in JOBS}
            cpu: dict[str, dict[str, list[float]]] = {j: {t: [] for t in uris} for j, _ in JOBS}
            names = list(uris)
            for r in range(args.rounds):
                # each round starts at another target, every other one backwards: no
                # target always runs first, or always after the same one
                order = names[r % len(names):] + names[:r % len(names)]
                if r % 2:
                    order.reverse()
                for job, rw in JOBS:
                    for t in order:
                        uri = uris[t]
                        os.sync()    # a run must not pay for the writeback of the one before
                        c0 = cpu_seconds(pids[t])
                        got = fio(uri, rw, "4k", 32, size, args.runtime)
                        # the server's CPU per request: steadier than IOPS on a shared machine
                        cpu[job][t].append((cpu_seconds(pids[t]) - c0) / got["ios"] * 1e6)
                        runs[job][t].append(got["iops"])
                        print(f"round {r + 1} {job} {t}: {got['iops'] / 1000:.1f}k IOPS, "
                              f"{cpu[job][t][-1]:.1f} us CPU/request", file=sys.stderr)
            scraper.halt.set()
            scraper.join()
        print(f"\nvsand {tree_state(ROOT)}" + (f"; vsand-before = {args.before} ({before[:12]})" if before else ""))
        print(f"{size >> 20} MiB RAID0 LUN on 4 image files, 4K QD32, {args.runtime} s per run, "
              f"{args.rounds} rounds, median; {os.cpu_count()} cores; metrics scraped every "
              f"{args.scrape:g} s ({scraper.scrapes} scrapes of {scraper.bytes} bytes)")
        print(f"\n{'target':<20}" + "".join(f"{j:>26}{'CPU/req':>10}" for j, _ in JOBS))
        for t in uris:
            row = f"{t:<20}"
            for job, _ in JOBS:
                m, base = median(runs[job][t]), median(runs[job][NBDKIT])
                row += f"{f'{m / 1000:.1f}k ({m / base:.2f}x nbdkit)':>26}{median(cpu[job][t]):>8.1f}us"
            print(row)
        for job, _ in JOBS:
            on, off = median(runs[job][ON]), median(runs[job][OFF])
            con, coff = median(cpu[job][ON]), median(cpu[job][OFF])
            line = f"{job}: metrics on / off: IOPS {on / off:.3f}, CPU per request {con / coff:.3f}"
            if BEFORE in uris:
                line += (f"; off / before: IOPS {off / median(runs[job][BEFORE]):.3f}, "
                         f"CPU per request {coff / median(cpu[job][BEFORE]):.3f}")
            print(line)
        print("\nevery round (k IOPS):")
        for job, _ in JOBS:
            for t in uris:
                print(f"  {job:<14}{t:<20}" + " ".join(f"{x / 1000:.1f}" for x in runs[job][t])
                      + "   CPU us/request " + " ".join(f"{x:.1f}" for x in cpu[job][t]))
        return 0
    except (RuntimeError, OSError) as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
