#!/usr/bin/env python3
"""BGCOPY benchmark (issue #5 acceptance), all against one vsand daemon plus nbdkit
in the same run:

1. Idle copy rate: a LUN filled with SIZE of data, then `snapclone.create`; the
   rate is the bytes BGCOPY copied over the time from creation to independence
   (target >= 500 MiB/s). For scale, the same amount copied by nbdcopy between two
   nbdkit file exports on the same disk (a plain copy tool on the same storage),
   and a ratio.
2. Foreground 4K random writes (fio, nbd engine, QD32) on the source while BGCOPY
   runs, against the same fio on the source with a plain snapshot instead of the
   clone (same copy-on-first-write work, no BGCOPY): p99 latency ratio (target
   <= 2x) and IOPS, for both snapclone modes (eager: Fig. 13, scaling: Fig. 15),
   plus each mode's time to independence. The chain is `s0 <- clone <- src`, so the
   modes differ: eager copies into s0 on each first write to src, scaling leaves
   that to a final pass.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchlib import fio, wait_for  # noqa: E402
from vsand.control.client import call  # noqa: E402
from vsand.units import GiB, MiB, format_size, parse_size  # noqa: E402


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


class Vsand:
    def __init__(self, workdir: str, drive_size: int):
        self.dir = tempfile.mkdtemp(prefix="bench-bgcopy-", dir=workdir)
        self.sock = os.path.join(self.dir, "nbd.sock")
        self.ctl_path = os.path.join(self.dir, "control.sock")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vsand", "--state-dir", self.dir, "--drives", "8",
             "--drive-size", str(drive_size), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "log"), "wb"))
        wait_for(self.ctl_path, self.proc)
        time.sleep(0.2)

    def ctl(self, op: str, **args):
        return call(self.ctl_path, op, **args)

    def uri(self, name: str) -> str:
        return f"nbd+unix:///{name}?socket={self.sock}"

    def wait_task(self, tid: int, timeout: float = 900) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            t = self.ctl("task.show", id=tid)
            if t["state"] not in ("queued", "running"):
                return t
            time.sleep(0.02)
        raise RuntimeError(f"task {tid} did not finish")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        shutil.rmtree(self.dir, ignore_errors=True)


def fill(v: Vsand, name: str, size: int) -> None:
    subprocess.run(["fio", "--name=fill", "--ioengine=nbd", f"--uri={v.uri(name)}", "--rw=write",
                    "--bs=1M", "--iodepth=8", f"--size={size}", "--buffer_compress_percentage=0",
                    "--refill_buffers=0"], check=True, capture_output=True)


def idle_rate(v: Vsand, size: int, raid: int) -> tuple[float, float]:
    v.ctl("lun.create", name=f"idle{raid}", size=size, raid=raid)
    fill(v, f"idle{raid}", size)
    subprocess.run(["sync"])            # the fill's dirty pages are not the copy's to write
    t0 = time.monotonic()
    info = v.ctl("snapclone.create", source=f"idle{raid}", name=f"idle{raid}-c")
    t = v.wait_task(info["task"])
    dt = time.monotonic() - t0
    assert t["state"] == "done", t
    v.ctl("lun.delete", name=f"idle{raid}-c")
    v.ctl("lun.delete", name=f"idle{raid}")
    return t["bytes"] / MiB / dt, dt


def nbdcopy_rate(workdir: str, size: int) -> float:
    d = tempfile.mkdtemp(prefix="bench-nbdcopy-", dir=workdir)
    src, dst = os.path.join(d, "src.img"), os.path.join(d, "dst.img")
    subprocess.run(["fio", "--name=f", f"--filename={src}", "--rw=write", "--bs=1M",
                    f"--size={size}", "--refill_buffers=0"], check=True, capture_output=True)
    with open(dst, "wb") as f:
        f.truncate(size)
    procs = []
    socks = []
    for img in (src, dst):
        s = img + ".sock"
        procs.append(subprocess.Popen(["nbdkit", "-f", "-U", s, "file", img]))
        socks.append(s)
    try:
        for s, p in zip(socks, procs):
            wait_for(s, p)
        subprocess.run(["sync"])
        t0 = time.monotonic()
        subprocess.run(["nbdcopy", "--flush", f"nbd+unix:///?socket={socks[0]}",
                        f"nbd+unix:///?socket={socks[1]}"], check=True)
        return size / MiB / (time.monotonic() - t0)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


def foreground(v: Vsand, size: int, mode: str | None, runtime: int) -> dict:
    """fio 4K randwrite on src with s0 <- (clone | snapshot) <- src. mode None: a
    plain snapshot, no BGCOPY (the baseline)."""
    tag = mode or "base"
    src = f"fg-{tag}"
    v.ctl("lun.create", name=src, size=size, raid=5)
    fill(v, src, size)
    v.ctl("snapshot.create", source=src, name=f"{src}-s0")
    if mode:
        v.ctl("pool.set", key="snapclone_mode", value=mode)
    out: dict = {}
    t0 = time.monotonic()
    if mode:
        info = v.ctl("snapclone.create", source=src, name=f"{src}-c")
        done = threading.Event()

        def watch():
            t = v.wait_task(info["task"])
            out["independent_s"] = time.monotonic() - t0
            out["task"] = t
            done.set()
        threading.Thread(target=watch, daemon=True).start()
    else:
        v.ctl("snapshot.create", source=src, name=f"{src}-c")
    out.update(fio(v.uri(src), "randwrite", "4k", 32, size, runtime))
    if mode:
        done.wait(900)
    for name in (f"{src}-c", f"{src}-s0", src):
        v.ctl("lun.delete", name=name)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=os.path.join(os.getcwd(), "var"))
    ap.add_argument("--size", default="2G", help="LUN size for the copy-rate runs")
    ap.add_argument("--fg-size", default="1G", help="LUN size for the foreground runs")
    ap.add_argument("--runtime", type=int, default=10)
    a = ap.parse_args()
    size, fg_size = parse_size(a.size), parse_size(a.fg_size)
    os.makedirs(a.workdir, exist_ok=True)
    v = Vsand(a.workdir, 4 * GiB)
    try:
        print(f"== idle BGCOPY of a full {format_size(size)} LUN (target >= 500 MiB/s)")
        ref = nbdcopy_rate(a.workdir, size)
        for raid in (0, 5):
            rate, dt = idle_rate(v, size, raid)
            print(f"RAID{raid}: {rate:.0f} MiB/s, independent after {dt:.2f} s; "
                  f"nbdcopy nbdkit-file -> nbdkit-file {ref:.0f} MiB/s: {rate / ref:.2f}x "
                  f"{verdict(rate >= 500)}")
        print(f"== fio 4K randwrite QD32 on the source during BGCOPY ({format_size(fg_size)} "
              f"RAID5 LUN, {a.runtime} s; target p99 <= 2x the run without BGCOPY)")
        base = foreground(v, fg_size, None, a.runtime)
        print(f"no BGCOPY (snapshot): {base['iops']:.0f} IOPS, p99 {base['p99_us']:.0f} us")
        for mode in ("eager", "scaling"):
            r = foreground(v, fg_size, mode, a.runtime)
            ratio = r["p99_us"] / base["p99_us"] if base["p99_us"] else float("inf")
            print(f"{mode:8s}: {r['iops']:.0f} IOPS ({r['iops'] / base['iops']:.2f}x), p99 "
                  f"{r['p99_us']:.0f} us ({ratio:.2f}x) {verdict(ratio <= 2)}; independent after "
                  f"{r.get('independent_s', float('nan')):.1f} s, {r['task']['bytes'] / MiB:.0f} "
                  f"MiB copied")
    finally:
        v.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
