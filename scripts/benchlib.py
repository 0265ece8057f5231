"""Helpers shared by the benchmark scripts (not part of vsand)."""

from __future__ import annotations

import json
import os
import subprocess
import time


def wait_for(path: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Waits until ``proc`` has created ``path`` (a socket), failing if it exits."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not appear")


def fio(uri: str, rw: str, bs: str, qd: int, size: int, runtime: int) -> dict:
    """One fio job on the nbd engine: IOPS, MiB/s, I/O count and p99 latency (us)."""
    cmd = ["fio", "--name=j", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
           f"--iodepth={qd}", f"--size={size}", "--output-format=json", "--randrepeat=0",
           "--norandommap"]
    if runtime:
        cmd += [f"--runtime={runtime}", "--time_based"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"fio on {uri} failed: {r.stderr[-2000:]}")
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return {"iops": side["iops"], "mibs": side["bw_bytes"] / 2**20, "ios": side["total_ios"],
            "p99_us": side["clat_ns"]["percentile"].get("99.000000", 0) / 1000}
