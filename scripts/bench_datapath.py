#!/usr/bin/env python3
"""Data path benchmark (issue 11, item 7): vsand RAID0 and RAID5 LUNs against nbdkit's
file plugin on an image file and against fio straight on that file, in one run.

Targets:  vsand-raid0, vsand-raid5 (fio nbd engine over vsand's UNIX socket),
          nbdkit-file (fio nbd engine, `nbdkit file` on a raw image),
          fio-file (fio libaio, O_DIRECT, on that same raw image: the ceiling). O_DIRECT
          never uses the page cache, so its warm figures would repeat its cold ones: it
          runs warm only when there is no cold pass.
Modes:    warm: page cache populated (the backing files' data extents read first);
          cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before every job (root only;
          skipped with the reason otherwise).
Jobs:     4K random read and write at QD1 and QD32; 1 MiB sequential read and write at
          QD1, QD8 and QD32; "flush" (NBD targets, warm): a 4K random reader at QD1
          alone, then beside a second client that sends a FLUSH after every 4K write
          (fio fsync=1).
Each cell: IOPS / MiB/s / p99 completion latency, and the ratio to nbdkit-file of the
same mode and job; with --rounds N, every job runs N times over all targets in turn
(this machine's speed drifts from minute to minute) and a cell is its median run; cold 4K randread QD32 is also given against fio-file.

Every data set is written once (1 MiB sequential) before measuring, so reads hit
allocated data. Targets of issue 11 (ratios, same run): cold 4K randread QD32 >= 1.0x
nbdkit-file and >= 0.7x fio-file; warm 4K randread >= 1.0x, randwrite >= 0.8x, 1 MiB
sequential >= 0.8x at every QD; the flusher raises the reader's p99 by <= 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)
from benchlib import (Servers, cache_files, cold_unavailable, drop_caches, export_tree,  # noqa: E402
                      file_engine, fio, job_options, job_stats, nbd_engine, run_fio, tree_state)
from vsand.control.client import ControlError  # noqa: E402
from vsand.units import GiB, MiB, format_size, parse_size  # noqa: E402

TARGETS = ("fio-file", "nbdkit-file", "vsand-raid0", "vsand-raid5")
BASE, CEILING = "nbdkit-file", "fio-file"
CEILING_JOB = "4k-randread-qd32"
JOBS = {f"4k-{rw}-qd{qd}": (rw, "4k", qd) for rw in ("randread", "randwrite") for qd in (1, 32)}
JOBS.update({f"1m-seq{rw}-qd{qd}": (rw, "1m", qd) for rw in ("read", "write") for qd in (1, 8, 32)})
FLUSH = "flush"
MODES = ("warm", "cold")


@dataclass
class Target:
    name: str
    dataset: str                    # targets with the same dataset share their data
    uri: str | None = None          # NBD targets
    image: str | None = None        # fio-file
    files: list[str] = field(default_factory=list)   # what backs it, for warming the cache

    def engine(self) -> list[str]:
        return nbd_engine(self.uri) if self.uri else file_engine(self.image, direct=True)


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        distro = platform.freedesktop_os_release().get("PRETTY_NAME", "?")
    except OSError:
        distro = "?"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (f"{os.cpu_count()} cores ({model}), {mem / GiB:.0f} GiB RAM, {distro}, "
            f"kernel {platform.release()}")


def fmt_cell(r: dict | None, base: dict | None) -> str:
    if r is None:
        return "O_DIRECT: see cold"
    iops = f"{r['iops'] / 1000:.1f}k" if r["iops"] >= 1000 else f"{r['iops']:.0f}"
    mibs = f"{r['mibs']:.1f}" if r["mibs"] < 10 else f"{r['mibs']:.0f}"
    text = f"{iops} / {mibs} / {fmt_lat(r['p99_us'])}"
    if base is not None:
        text += f" ({ratio(r, base)})"
    return text


def fmt_lat(us: float) -> str:
    if us < 1000:
        return f"{us:.0f} us"
    return f"{us / 1000:.1f} ms" if us < 100_000 else f"{us / 1000:.0f} ms"


def ratio(r: dict, base: dict) -> str:
    return f"{r['iops'] / base['iops']:.2f}x" if base["iops"] else "n/a"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])


def setup(srv: Servers, work: str, names: list[str], size: int,
          src: str | None) -> dict[str, Target]:
    out: dict[str, Target] = {}
    image = os.path.join(work, "disk.raw")
    if {BASE, CEILING} & set(names):
        with open(image, "wb") as f:
            f.truncate(size)
    if CEILING in names:
        out[CEILING] = Target(CEILING, image, image=image, files=[image])
    if BASE in names:
        out[BASE] = Target(BASE, image, uri=srv.nbdkit_file(image, os.path.join(work, "nbdkit.sock")),
                           files=[image])
    raids = [int(n[-1]) for n in names if n.startswith("vsand-raid")]
    if raids:
        v = srv.vsand(os.path.join(work, "vsand"), max(size, GiB), src=src)
        for raid in raids:
            v.call("lun.create", name=f"r{raid}", size=size, raid=raid)
            out[f"vsand-raid{raid}"] = Target(f"vsand-raid{raid}", f"r{raid}", uri=v.uri(f"r{raid}"),
                                              files=v.drive_paths())
    return {n: out[n] for n in names}


def flush_effect(t: Target, size: int, runtime: int) -> dict:
    """The reader's p99 alone, then with a neighbour that FLUSHes after every write."""
    common = [*t.engine(), f"--size={size}", f"--runtime={runtime}", "--time_based"]
    reader = ["--name=reader", *job_options("randread", "4k", 1)]
    # otherwise the first FLUSHes write back what earlier jobs left dirty
    os.sync()
    alone = job_stats(run_fio(common + reader)[0], "read")
    os.sync()
    rd, fl = run_fio(common + reader + ["--name=flusher", *job_options("randwrite", "4k", 1),
                                        "--fsync=1"])
    beside = job_stats(rd, "read")
    return {"alone": alone, "with_flusher": beside,
            "flushes_per_s": fl["sync"]["total_ios"] / max(fl["job_runtime"] / 1000, 1e-9),
            "p99_ratio": beside["p99_us"] / alone["p99_us"] if alone["p99_us"] else None}


def median_run(runs: list[dict]) -> dict:
    """The run of median IOPS (the lower one of an even count), with every round's IOPS."""
    r = dict(sorted(runs, key=lambda x: x["iops"])[(len(runs) - 1) // 2])
    r["rounds_iops"] = [x["iops"] for x in runs]
    return r


def measure(targets: dict[str, Target], res: dict, jobs: list[str], modes: list[str],
            flush: bool, size: int, runtime: int, rounds: int = 1) -> None:
    """Lays each data set down, then runs the phases, filling res["results"] and res["flush"]."""
    laid: set[str] = set()
    for t in targets.values():
        if t.dataset not in laid:
            progress(f"writing {format_size(size)} to {t.name}")
            fio(None, "write", "1m", 8, size, 0, engine=t.engine())
            laid.add(t.dataset)
    # the flusher measures the server, not the disk: it runs while the cache is warm
    phases = [p for p in ("warm", FLUSH, "cold") if p in modes or p == FLUSH and flush]
    warmed = False
    for phase in phases:
        if phase != "cold" and not warmed:
            cache_files(sorted({f for t in targets.values() for f in t.files}))
            warmed = True
        if phase == FLUSH:
            for t in targets.values():
                if not t.uri:
                    continue
                res["flush"][t.name] = f = flush_effect(t, size, runtime)
                progress(f"flush {t.name}: reader p99 {fmt_lat(f['alone']['p99_us'])} -> "
                         f"{fmt_lat(f['with_flusher']['p99_us'])}")
            continue
        cells = res["results"].setdefault(phase, {})
        for job in jobs:
            rw, bs, qd = JOBS[job]
            runs: dict[str, list] = {}
            for _ in range(rounds):
                for t in targets.values():
                    if t.name == CEILING and phase == "warm" and "cold" in modes:
                        continue
                    # a job must not pay for the writeback of the jobs before it
                    if phase == "cold":
                        drop_caches()
                    else:
                        os.sync()
                    r = fio(None, rw, bs, qd, size, runtime, engine=t.engine())
                    r["load1"] = os.getloadavg()[0]     # this machine is shared: for judging a cell
                    runs.setdefault(t.name, []).append(r)
                    progress(f"{phase} {job} {t.name}: {fmt_cell(r, None)}")
            cells[job] = {n: median_run(runs[n]) if n in runs else None for n in targets}


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def report(res: dict, names: list[str], base_name: str = BASE) -> str:
    out = []
    cells = res["results"]
    for skip in res["skipped"]:
        out.append(f"skipped: {skip}")
    if cells:
        header = ["mode", "job", *names]
        rows = []
        for mode, jobs in cells.items():
            for job, per in jobs.items():
                base = per.get(base_name)    # None: the base target not selected
                rows.append([mode, job, *(fmt_cell(per[n], None if n == base_name else base)
                                          for n in names)])
        out += [f"cell: IOPS / MiB/s / p99 completion latency (ratio to {base_name}, same mode and job)"
                if base_name in names else "cell: IOPS / MiB/s / p99 completion latency", "",
                md_table(header, rows)]
    ceil = cells.get("cold", {}).get(CEILING_JOB, {}).get(CEILING)
    if ceil:
        per = cells["cold"][CEILING_JOB]
        out += ["", f"cold {CEILING_JOB} against {CEILING} (O_DIRECT): "
                + ", ".join(f"{n} {ratio(per[n], ceil)}" for n in names if n != CEILING)]
    if res["flush"]:
        rows = [[n, fmt_lat(f["alone"]["p99_us"]), fmt_lat(f["with_flusher"]["p99_us"]),
                 f"{f['p99_ratio']:.2f}x" if f["p99_ratio"] else "n/a",
                 f"{f['alone']['iops'] / 1000:.1f}k -> {f['with_flusher']['iops'] / 1000:.1f}k",
                 f"{f['flushes_per_s']:.0f}"] for n, f in res["flush"].items()]
        out += ["", "4K random reader (QD1, warm) beside a client that FLUSHes after every 4K write:",
                "", md_table(["target", "reader p99 alone", "p99 with flusher", "ratio",
                              "reader IOPS", "flushes/s"], rows)]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", type=int, default=5, help="seconds per fio job (5)")
    ap.add_argument("--size", default="4G",
                    help="data set per target (4G: a cold 4K random job touches a small part of it)")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"subset of {','.join(TARGETS)}")
    ap.add_argument("--jobs", default=",".join([*JOBS, FLUSH]),
                    help=f"subset of {','.join([*JOBS, FLUSH])}")
    ap.add_argument("--modes", default=",".join(MODES), help="warm, cold or both")
    ap.add_argument("--rounds", type=int, default=1,
                    help="runs of every job over all targets in turn; a cell is the median (1)")
    ap.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    ap.add_argument("--vsand-rev", metavar="REV",
                    help="measure the vsand of this commit (git archive) instead of the working tree")
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/var/tmp"),
                    help="where the images go (needs about 3.2 x --size of disk)")
    args = ap.parse_args()
    names = [t for t in args.targets.split(",") if t]
    jobs = [j for j in args.jobs.split(",") if j]
    modes = [m for m in args.modes.split(",") if m]
    for kind, got, known in (("target", names, TARGETS), ("job", jobs, [*JOBS, FLUSH]),
                             ("mode", modes, MODES)):
        bad = [g for g in got if g not in known]
        if bad:
            ap.error(f"unknown {kind} {', '.join(bad)}; known: {', '.join(known)}")
    tools = ["fio"] + (["nbdkit"] if BASE in names else [])
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        print(f"{', '.join(missing)} missing (`make deps` installs them as root)", file=sys.stderr)
        return 2
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    size = parse_size(args.size)
    if size % MiB:
        ap.error("--size must be a multiple of 1 MiB (a LUN size)")

    res, jobs, flush = new_run(args, size, jobs)
    if "cold" in modes and (why := cold_unavailable()):
        res["skipped"].append(f"cold runs: {why}")
        modes.remove("cold")
        progress(f"skipping cold runs: {why}")
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="bench-datapath-", dir=args.dir)
    try:
        with Servers() as srv:
            src = None
            if args.vsand_rev:
                src = os.path.join(work, "src")
                res["vsand"] = f"{export_tree(REPO, args.vsand_rev, src)[:12]} (git archive)"
            progress(f"vsand: {res['vsand']}")
            targets = setup(srv, work, names, size, src)
            measure(targets, res, jobs, modes, flush, size, args.runtime, args.rounds)
    except (RuntimeError, ControlError) as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["elapsed_s"] = time.monotonic() - t0
    print_results(res, args, list(targets))
    return 0


def new_run(args, size: int, jobs: list[str]) -> tuple[dict, list[str], bool]:
    """The results of a run before its measurements (when, where, what was asked for),
    the fio jobs, and whether the flush measurement was asked for."""
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
           "args": vars(args), "size": size, "vsand": tree_state(REPO),
           "load_before": os.getloadavg(), "skipped": [], "results": {}, "flush": {}}
    progress(f"{res['machine']}; {format_size(size)} per target, {args.runtime} s per job")
    return res, [j for j in jobs if j != FLUSH], FLUSH in jobs


def print_results(res: dict, args, names: list[str], where: str = "", extra: list[str] = (),
                  base_name: str = BASE) -> None:
    """The run's header, ``extra`` lines and the tables; the JSON file if asked for."""
    res["load_after"] = os.getloadavg()
    print(f"\n{res['date']}; {res['machine']}; vsand {res['vsand']}")
    print(f"{where}{format_size(res['size'])} per target, {args.runtime} s per job, "
          f"{args.rounds} round(s), {res['elapsed_s']:.0f} s in all; load average before/after: "
          + " / ".join(f"{res[k][0]:.2f}" for k in ("load_before", "load_after")))
    for line in extra:
        print(line)
    print(report(res, names, base_name))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
