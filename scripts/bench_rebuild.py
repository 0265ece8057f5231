#!/usr/bin/env python3
"""Rebuild benchmark (issue 12), in one run:

1. Rebuild rate, no client load: a RAID5 LUN fills most of a pool of DRIVES drives
   of DRIVE_SIZE; the page cache is dropped (root); a drive is failed with
   `drive.fail`; the time runs from that call until the rebuild task is done and
   its writes are synced. Against `dd conv=fsync` copying the same number of bytes
   from that drive's image to a new file on the same disk, caches dropped
   likewise. Target: rebuild rate >= 0.5x dd. A RAID5 member is rebuilt from the
   four others, so each byte rebuilt costs five bytes of drive I/O against dd's
   two; the bytes moved per second are printed too.
2. Foreground p99 during a rebuild: fio 4K random read, then write, QD1, on a
   second RAID5 LUN, first with nothing else running, then while a second failed
   drive is rebuilt (latency guard on, no rate limit). Target: p99 <= 2x idle.
3. Time from a drive's first errors to "failed, rebuilding": one drive is an
   image served by `nbdkit file` with the error filter behind nbdfuse (root, nbdkit
   and nbdfuse needed; skipped with the reason otherwise); while fio writes to a
   RAID5 LUN, write errors are switched on; the time until `drive list` says failed
   and a rebuild task exists is printed.
4. Foreground p99 during leveling: the same fio jobs idle, then while the `level`
   task a `drive add` started moves PSEGs onto the new drive (latency guard on, no
   rate limit). Target: p99 <= 2x idle. The leveling's rate once the jobs end is
   printed too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchlib import Servers, Vsand, cold_unavailable, drop_caches, fio, wait_for  # noqa: E402
from vsand.units import GiB, MiB, format_size, parse_size  # noqa: E402


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def rebuild_task(v) -> dict | None:
    ts = [t for t in v.call("task.list") if t["kind"] == "rebuild"]
    return ts[-1] if ts else None


def wait_rebuilt(v, since_id: int) -> dict:
    while True:
        t = rebuild_task(v)
        if t and t["id"] > since_id and t["state"] not in ("queued", "running"):
            return t
        time.sleep(0.02)


def fill(uri: str, size: int) -> None:
    subprocess.run(["fio", "--name=fill", "--ioengine=nbd", f"--uri={uri}", "--rw=write", "--bs=1m",
                    "--iodepth=8", f"--size={size}", "--output-format=terse"], check=True,
                   stdout=subprocess.DEVNULL)


def victim(v, avoid=()) -> dict:
    return next(d for d in v.call("drive.list") if not d["quorum"] and not d["failed"]
                and d["index"] not in avoid)


def rate_part(v, tmp: str, cold: bool) -> tuple[dict, int]:
    """Part 1; returns the rebuilt task and the failed drive's index."""
    d = victim(v)
    if cold:
        drop_caches()
    t0 = time.monotonic()
    v.call("drive.fail", index=d["index"])
    task = wait_rebuilt(v, 0)
    os.sync()
    secs = time.monotonic() - t0
    nbytes = task["bytes"]
    print(f"\n1. rebuild of drive {d['index']}: {task['state']}, {task['done']} members, "
          f"{format_size(nbytes)} written in {secs:.2f} s = {nbytes / MiB / secs:.0f} MiB/s")
    out = os.path.join(tmp, "dd.out")
    if cold:
        drop_caches()
    t0 = time.monotonic()
    subprocess.run(["dd", f"if={d['path']}", f"of={out}", "bs=1M", f"count={nbytes // MiB}",
                    "conv=fsync", "status=none"], check=True)
    dd = time.monotonic() - t0
    os.unlink(out)
    ratio = (nbytes / secs) / (nbytes / dd)
    print(f"   dd conv=fsync of the same {format_size(nbytes)} from that drive's image: "
          f"{dd:.2f} s = {nbytes / MiB / dd:.0f} MiB/s")
    print(f"   rebuild / dd = {ratio:.2f}x   target >= 0.5x: {verdict(ratio >= 0.5)}"
          + ("" if cold else "   (page cache warm: not root)"))
    # RAID5: each byte rebuilt costs four bytes read (the other members) and one
    # written; dd reads one and writes one. Bytes moved per second, compared:
    print(f"   bytes moved per second (rebuild: 4 read + 1 written per byte rebuilt; dd: "
          f"1 + 1): {ratio * 5 / 2:.2f}x dd's")
    return task, d["index"]


def print_p99(idle: dict, busy: dict, what: str) -> None:
    for rw in idle:
        a, b = idle[rw], busy[rw]
        r = b["p99_us"] / a["p99_us"] if a["p99_us"] else float("inf")
        print(f"   {rw:9s} idle {a['iops']:7.0f} IOPS p99 {a['p99_us']:7.0f} us | {what} "
              f"{b['iops']:7.0f} IOPS p99 {b['p99_us']:7.0f} us | p99 {r:.2f}x   target <= 2x: {verdict(r <= 2)}")


def p99_part(v, first: int, fg_uri: str, runtime: int) -> None:
    idle = {rw: fio(fg_uri, rw, "4k", 1, 1 * GiB, runtime) for rw in ("randread", "randwrite")}
    d = victim(v, avoid=(first,))
    before = rebuild_task(v)["id"]
    v.call("drive.fail", index=d["index"])
    while not rebuild_task(v) or rebuild_task(v)["id"] == before:
        time.sleep(0.02)
    busy = {rw: fio(fg_uri, rw, "4k", 1, 1 * GiB, runtime) for rw in ("randread", "randwrite")}
    t = rebuild_task(v)
    still = t["state"] == "running"
    print(f"\n2. foreground fio 4K QD1 on another RAID5 LUN, {runtime} s each, idle vs during "
          f"the rebuild of drive {d['index']} ({'still running after' if still else 'ENDED before'} "
          f"the second job: {t['done']} of {t['total']} members)")
    print_p99(idle, busy, "rebuilding")
    wait_rebuilt(v, before)


def level_part(v, fg_uri: str, runtime: int) -> None:
    idle = {rw: fio(fg_uri, rw, "4k", 1, 1 * GiB, runtime) for rw in ("randread", "randwrite")}
    t0 = time.monotonic()
    added = v.call("drive.add")
    while not [t for t in v.call("task.list") if t["kind"] == "level"]:
        time.sleep(0.02)
    busy = {rw: fio(fg_uri, rw, "4k", 1, 1 * GiB, runtime) for rw in ("randread", "randwrite")}
    t = [t for t in v.call("task.list") if t["kind"] == "level"][-1]
    still = t["state"] == "running"
    print(f"\n4. foreground fio 4K QD1, {runtime} s each, idle vs during the leveling onto added "
          f"drive {added['index']} ({'still running after' if still else 'ENDED before'} the second "
          f"job: {t['done']} of {t['total']} PSEG moves)")
    print_p99(idle, busy, "leveling")
    while t["state"] in ("queued", "running"):
        time.sleep(0.05)
        t = next(x for x in v.call("task.list") if x["id"] == t["id"])
    secs = time.monotonic() - t0
    use = [f"{100 * (d['psegs'] - d['free_psegs']) / d['psegs']:.0f}%" for d in v.call("drive.list")
           if d["state"] == "ok"]
    print(f"   leveling {t['state']}: {t['done']} moves, {format_size(t['bytes'])} in {secs:.1f} s "
          f"(fio runs included) = {t['bytes'] / MiB / secs:.0f} MiB/s; drives' use after: {' '.join(use)}")


def detect_part(tmp: str) -> None:
    why = None
    if os.geteuid() != 0:
        why = "not root (nbdfuse's FUSE mount)"
    for tool in ("nbdkit", "nbdfuse", "fio"):
        if not why and not shutil.which(tool):
            why = f"{tool} is not installed"
    if why:
        print(f"\n3. time to failed: skipped: {why}")
        return
    img, sock, fuse = (os.path.join(tmp, n) for n in ("flaky.raw", "kit.sock", "fuse"))
    trigger = os.path.join(tmp, "fail-writes")
    os.makedirs(fuse)
    with open(img, "wb") as f:
        f.truncate(256 * MiB)
    plain = []
    for i in range(5):
        p = os.path.join(tmp, f"p{i}.img")
        with open(p, "wb") as f:
            f.truncate(256 * MiB)
        plain.append(p)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    kit = subprocess.Popen(["nbdkit", "-f", "-U", sock, "--filter=error", "file", img, "error=EIO",
                            "error-pwrite-rate=100%", f"error-pwrite-file={trigger}"], **quiet)
    nf = None
    try:
        wait_for(sock, kit)
        nf = subprocess.Popen(["nbdfuse", fuse, f"nbd+unix:///?socket={sock}"], **quiet)
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(fuse, "nbd")):
            assert time.monotonic() < deadline, "nbdfuse did not start"
            time.sleep(0.02)
        state = os.path.join(tmp, "state3")
        with Servers() as s:
            v = Vsand(state)
            s.spawn([sys.executable, "-m", "vsand", "--state-dir", state, "--listen", "none",
                     "--log-level", "warning", "--io", "buffered",
                     *[a for p in (*plain, os.path.join(fuse, "nbd")) for a in ("--drive", p)]],
                    v.control)
            time.sleep(0.2)
            v.call("lun.create", name="w", size=64 * MiB, raid=5)
            fill(v.uri("w"), 64 * MiB)
            load = subprocess.Popen(["fio", "--name=load", "--ioengine=nbd", f"--uri={v.uri('w')}",
                                     "--rw=randwrite", "--bs=4k", "--iodepth=1", "--size=64m",
                                     "--time_based", "--runtime=30", "--output-format=terse"],
                                    **quiet)
            time.sleep(1)
            t0 = time.monotonic()
            open(trigger, "w").close()
            failed_at = None
            while time.monotonic() - t0 < 30:
                flaky = next(d for d in v.call("drive.list") if d["path"].endswith("/nbd"))
                if flaky["failed"] and failed_at is None:
                    failed_at = time.monotonic() - t0
                t = rebuild_task(v)
                if failed_at is not None and t:
                    rebuilding = time.monotonic() - t0
                    break
                time.sleep(0.005)
            else:
                rebuilding = None
            load.terminate()        # fio's job runs in a child: SIGTERM stops both
            load.wait()
            print(f"\n3. write errors switched on under fio 4K QD1 writes: drive failed after "
                  f"{failed_at * 1e3 if failed_at is not None else float('nan'):.0f} ms, "
                  f"rebuild task {'there' if rebuilding else 'MISSING'} after "
                  f"{(rebuilding or float('nan')) * 1e3:.0f} ms (polled every 5 ms)")
    finally:
        if nf is not None:
            subprocess.run(["fusermount3", "-u", fuse], check=False)
            nf.wait(30)
        kit.terminate()
        kit.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drive-size", default="4G", type=parse_size)
    ap.add_argument("--drives", type=int, default=7)
    ap.add_argument("--fill", type=float, default=0.8, help="share of the pool the data LUN fills")
    ap.add_argument("--runtime", type=int, default=10, help="seconds per foreground fio job")
    ap.add_argument("--dir", default=None, help="where the drive images go (default: a temp dir)")
    ap.add_argument("--parts", default="1,2,3,4", help="which parts to run (1 needs no other; 2 and 4 run 1 first)")
    a = ap.parse_args()
    if not shutil.which("fio"):
        print("fio is not installed", file=sys.stderr)
        return 2
    why = cold_unavailable()
    tmp = tempfile.mkdtemp(prefix="vsand-bench-rebuild-", dir=a.dir)
    try:
        print(f"vsand rebuild benchmark: {a.drives} drives of {format_size(a.drive_size)}, "
              f"{time.strftime('%Y-%m-%d %H:%M')}; caches {'dropped' if not why else 'warm: ' + why}")
        parts = set(a.parts.split(","))
        if parts & {"1", "2", "4"}:
            with Servers() as s:
                v = s.vsand(os.path.join(tmp, "state"), a.drive_size, drives=a.drives)
                fg = 1 * GiB
                data = int((a.drives - 1) * a.drive_size * a.fill * 4 / 5) // GiB * GiB - fg
                v.call("lun.create", name="data", size=data, raid=5)
                v.call("lun.create", name="fg", size=fg, raid=5)
                fill(v.uri("data"), data)
                fill(v.uri("fg"), fg)
                print(f"data LUN: {format_size(data)} RAID5, written")
                _, first = rate_part(v, tmp, cold=why is None)
                if "2" in parts:
                    p99_part(v, first, v.uri("fg"), a.runtime)
                if "4" in parts:
                    level_part(v, v.uri("fg"), a.runtime)
        if "3" in parts:
            detect_part(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
