#!/usr/bin/env python3
"""RAM cost of the maps as RSS: map a LUN fully (thick, default 2 TiB) on sparse
drives and print bytes of RSS growth per mapped MiB, for RAID 0, 1 and 5.
Budget (DESIGN.md §6): <= 8, during and after creation and after a restart.

RSS is what an operator sees, so it counts everything the maps cost: the arrays,
but also transient Python objects of creation, commits and checkpoint loading
(glibc keeps what they used). Each phase runs in a fresh process, so no phase
inherits another's heap:

- create:     RSS after a thick create (its commits included) minus before;
              peak = VmHWM during it minus the RSS before;
- checkpoint: RSS after an explicit checkpoint (what close does) minus before create;
- restart:    RSS after Pool.open of that pool minus RSS after Pool.open of an empty
              pool on identical drives (the free maps scale with raw capacity and
              are in both); peak likewise from VmHWM;
- daemon:     the same create and restart with the real daemon (`python -m vsand`),
              read from /proc/PID/status: growth over a daemon that opened and serves
              the empty pool, and its VmHWM since (reset through /proc/PID/clear_refs;
              a restart's peak is its VmHWM from exec).

`--trace` adds a tracemalloc attribution of the create and restart phases (top
allocation sites still alive, and the traced peak); it slows creation severalfold.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from vsand.control.client import call  # noqa: E402
from vsand.units import GiB, MiB, TiB, parse_size  # noqa: E402

BUDGET = 8.0
RAW_FACTOR = {0: 1.0, 1: 2.0, 5: 1.25}


# ---- /proc ------------------------------------------------------------------------------
def mem(pid: int | str = "self") -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    got = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                got[k] = int(v.split()[0]) * 1024
    return got["VmRSS"], got["VmHWM"]


def reset_peak(pid: int | str = "self") -> None:
    """VmHWM restarts from the current RSS (Linux: 5 > clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def drive_size(size: int, raid: int) -> int:
    return int(size * RAW_FACTOR[raid] / 8 * 1.05) // GiB * GiB + 2 * GiB


# ---- phases, each in its own process -------------------------------------------------------
def child_create(args) -> dict:
    from vsand.disk.pool import Pool
    size, raid = parse_size(args.size), args.raid
    specs = [(p, drive_size(size, raid), "default") for p in args.paths]
    pool = Pool.create(specs)
    gc.collect()
    trace = _trace_start(args.trace)
    base = mem()[0]
    reset_peak()
    t0 = time.perf_counter()
    ld = pool.create_ld("big", size, raid=raid, thick=True)
    t_map = time.perf_counter() - t0
    created, peak = mem()
    out = {"mapped": ld.allocated_segments(), "arrays": pool.map_bytes(), "map_s": t_map,
           "create": created - base, "create_peak": peak - base}
    _trace_report(trace, "create", out["mapped"])
    reset_peak()
    pool.checkpoint()
    ck, peak = mem()
    out.update(checkpoint=ck - base, checkpoint_peak=peak - base, ckpt_bytes=pool.ckpt["len"])
    pool.close()
    return out


def child_open(args) -> dict:
    from vsand.disk.pool import Pool
    gc.collect()
    trace = _trace_start(args.trace)
    base = mem()[0]
    reset_peak()
    t0 = time.perf_counter()
    pool = Pool.open(args.paths)
    t_open = time.perf_counter() - t0
    rss, peak = mem()
    mapped = sum(ld.allocated_segments() for ld in pool.lds.values())
    _trace_report(trace, "restart", mapped)
    pool.close()
    return {"open_s": t_open, "rss": rss, "peak": peak, "base": base}


def _trace_start(on: bool):
    if not on:
        return None
    import tracemalloc
    tracemalloc.start(4)
    return tracemalloc


def _trace_report(tm, phase: str, mapped: int) -> None:
    if tm is None or not mapped:
        return
    now, peak = tm.get_traced_memory()
    print(f"  [{phase}] traced now {now / mapped:.2f} B/MiB, traced peak {peak / mapped:.2f} B/MiB; "
          "alive by site:", file=sys.stderr)
    for st in tm.take_snapshot().statistics("lineno")[:8]:
        print(f"    {st.size / mapped:7.2f} B/MiB {st.count:9d} objects  {st.traceback}", file=sys.stderr)
    tm.reset_peak()


def run_child(phase: str, raid: int, size: str, paths: list[str], trace: bool) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", phase, "--raid", str(raid),
           "--size", size] + (["--trace"] if trace else []) + ["--"] + paths
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if r.returncode:
        raise RuntimeError(f"{phase} child failed ({r.returncode})")
    return json.loads(r.stdout.strip().splitlines()[-1])


def in_process(raid: int, size: str, workdir: str, trace: bool) -> dict:
    from vsand.disk.pool import Pool
    d = tempfile.mkdtemp(prefix=f"mapmem-r{raid}-", dir=workdir)
    try:
        n = drive_size(parse_size(size), raid)
        big = [os.path.join(d, f"d{i}.img") for i in range(8)]
        empty = [os.path.join(d, f"e{i}.img") for i in range(8)]
        Pool.create([(p, n, "default") for p in empty]).close()
        r = run_child("create", raid, size, big, trace)
        e = run_child("open", raid, size, empty, False)
        o = run_child("open", raid, size, big, trace)
        r.update(restart=o["rss"] - e["rss"], restart_peak=o["peak"] - e["rss"], open_s=o["open_s"])
        return r
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---- the real daemon ----------------------------------------------------------------------
def daemon(raid: int, size: str, workdir: str) -> dict:
    d = tempfile.mkdtemp(prefix=f"mapmem-daemon-r{raid}-", dir=workdir)
    state = os.path.join(d, "state")
    ctl = os.path.join(state, "control.sock")
    n = drive_size(parse_size(size), raid)
    cmd = [sys.executable, "-m", "vsand", "--state-dir", state, "--drives", "8", "--drive-size", str(n),
           "--listen", "none", "--log-level", "warning"]
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, ".."))
    proc = None
    try:
        _stop(_start(cmd, env, ctl))      # formats the pool
        proc = _start(cmd, env, ctl)      # the baseline: serving the empty pool it opened
        base = mem(proc.pid)[0]
        reset_peak(proc.pid)
        t0 = time.perf_counter()
        call(ctl, "lun.create", name="big", size=parse_size(size), raid=raid, thick=True)
        t_map = time.perf_counter() - t0
        rss, peak = mem(proc.pid)
        out = {"create": rss - base, "create_peak": peak - base, "map_s": t_map}
        _stop(proc)
        proc = _start(cmd, env, ctl)
        rss, peak = mem(proc.pid)
        out.update(restart=rss - base, restart_peak=peak - base)
        _stop(proc)
        proc = None
        return out
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def _start(cmd: list[str], env: dict, ctl: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env)
    end = time.monotonic() + 600
    while True:            # the control socket answers once the pool is open and serving
        if proc.poll() is not None:
            raise RuntimeError(f"vsand exited with {proc.returncode}")
        if os.path.exists(ctl):
            try:
                call(ctl, "pool.get")     # light: no per-LD map walk
                return proc
            except Exception:
                pass
        if time.monotonic() > end:
            raise RuntimeError("vsand did not start")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    if proc.wait(timeout=600):
        raise RuntimeError(f"vsand stopped with {proc.returncode}")


# ---- report ---------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2T", help="LUN size (default 2T)")
    ap.add_argument("--raid", default="0,1,5")
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/var/tmp"),
                    help="where the sparse drive images go")
    ap.add_argument("--no-daemon", action="store_true", help="in-process phases only")
    ap.add_argument("--trace", action="store_true", help="tracemalloc attribution (slow)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.raid = int(args.raid)
        print(json.dumps({"create": child_create, "open": child_open}[args.child](args)))
        return 0
    worst = 0.0
    rows = []
    for raid in [int(x) for x in args.raid.split(",")]:
        r = in_process(raid, args.size, args.dir, args.trace)
        if not args.no_daemon:
            r["daemon"] = daemon(raid, args.size, args.dir)
        rows.append((raid, r))
        per = r["mapped"]
        keys = ["create", "create_peak", "checkpoint", "checkpoint_peak", "restart", "restart_peak"]
        vals = [r[k] / per for k in keys]
        if "daemon" in r:
            vals += [r["daemon"][k] / per for k in ("create", "create_peak", "restart", "restart_peak")]
        worst = max(worst, *vals)
        _print(raid, r)
    print(f"worst RSS growth per mapped MiB (peaks included): {worst:.2f} bytes "
          f"(budget {BUDGET:g}): {'OK' if worst <= BUDGET else 'OVER'}")
    return 0 if worst <= BUDGET else 1


def _print(raid: int, r: dict) -> None:
    per = r["mapped"]
    f = lambda k, src=r: f"{src[k] / per:6.2f}"  # noqa: E731
    print(f"RAID{raid}: {per / (TiB // MiB):.2f} TiB mapped, arrays {r['arrays'] / per:.2f} B/MiB, "
          f"checkpoint {r['ckpt_bytes'] / MiB:.1f} MiB, map {r['map_s']:.1f} s, open {r['open_s']:.2f} s")
    print(f"  {'B/MiB of RSS':<14}{'create':>8}{'peak':>8}{'ckpt':>8}{'peak':>8}{'restart':>8}{'peak':>8}")
    print(f"  {'in-process':<14}{f('create'):>8}{f('create_peak'):>8}{f('checkpoint'):>8}"
          f"{f('checkpoint_peak'):>8}{f('restart'):>8}{f('restart_peak'):>8}")
    d = r.get("daemon")
    if d:
        print(f"  {'daemon':<14}{f('create', d):>8}{f('create_peak', d):>8}{'':>8}{'':>8}"
              f"{f('restart', d):>8}{f('restart_peak', d):>8}   (create over RPC {d['map_s']:.1f} s)")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
