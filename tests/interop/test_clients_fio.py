"""fio's nbd engine (libnbd underneath) against the REAL daemon.

Random writes of mixed block sizes at iodepth 16 (with FLUSHes in flight among
them) and crc32c verification on RAID0, RAID1 and RAID5 LUNs, and trim-then-write
passes; then, after a clean daemon restart, a verify-only pass
over new connections (same seed, so fio knows what every block must hold).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import daemon_for, need

MiB = 1 << 20
SIZE = 64 * MiB


def need_fio_nbd() -> None:
    need("fio")
    r = subprocess.run(["fio", "--enghelp=nbd"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0 or "uri" not in r.stdout:
        pytest.skip("fio was built without the nbd engine")


def fio(uri: str, *extra: str, rw: str = "randwrite") -> dict:
    cmd = ["fio", "--name=vsand", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}",
           "--bsrange=4k-128k", f"--size={SIZE}", "--iodepth=16", "--verify=crc32c",
           "--verify_fatal=1", "--verify_state_save=0", "--randseed=4242", "--output-format=json",
           *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{cmd} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "verify:" not in r.stderr and "bad magic" not in r.stderr, r.stderr[-3000:]
    out = r.stdout[r.stdout.index("{"):]             # the engine prints a line before the JSON
    job = json.loads(out)["jobs"][0]
    assert job["error"] == 0, job
    return job


@pytest.mark.parametrize("raid,io", [(0, "buffered"), (1, "buffered"), (5, "buffered"), (5, "direct")])
def test_fio_randwrite_verify(request, raid, io):
    need_fio_nbd()
    daemon = daemon_for(request, io)
    name = f"fio-r{raid}"
    daemon.ctl("lun.create", name=name, size=SIZE, raid=raid)
    uri = daemon.uri(name)

    job = fio(uri, "--fsync=13")                     # a FLUSH after every 13 writes, in flight with them
    assert job["write"]["io_bytes"] == SIZE          # the random map covers the LUN once
    assert job["read"]["io_bytes"] == SIZE           # and all of it was read back and verified
    assert job["write"]["total_ios"] > SIZE // (128 << 10)
    assert job["sync"]["total_ios"] >= job["write"]["total_ios"] // 13

    info = daemon.ctl("lun.show", name=name)
    assert info["allocated"] == SIZE and info["connections"] == 0

    # the same blocks after a clean restart, over TCP this time
    assert daemon.stop() == 0, daemon.read_log()
    daemon.start()
    job = fio(daemon.uri(name, tcp=True), "--verify_only")
    assert job["read"]["io_bytes"] == SIZE
    assert daemon.alive() and "Traceback" not in daemon.read_log()


@pytest.mark.parametrize("raid", [1, 5])
def test_fio_trim_then_write_verify(daemon, raid):
    """randtrimwrite: every block is trimmed, then written, then verified."""
    need_fio_nbd()
    name = f"fio-tw-r{raid}"
    daemon.ctl("lun.create", name=name, size=SIZE, raid=raid)
    job = fio(daemon.uri(name), rw="randtrimwrite")
    assert job["trim"]["io_bytes"] == SIZE and job["write"]["io_bytes"] == SIZE
    assert job["read"]["io_bytes"] == SIZE
    assert daemon.alive() and "Traceback" not in daemon.read_log()


def test_fio_verify_only_catches_changes(daemon):
    """The verify-only pass above can fail: one changed byte is reported."""
    need_fio_nbd()
    need("qemu-io")
    daemon.ctl("lun.create", name="fio-neg", size=SIZE, raid=5)
    uri = daemon.uri("fio-neg")
    fio(uri)
    subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P 0x5c {SIZE // 2 + 100} 1", uri],
                   check=True, capture_output=True, timeout=60)
    cmd = ["fio", "--name=vsand", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
           "--bsrange=4k-128k", f"--size={SIZE}", "--iodepth=16", "--verify=crc32c",
           "--verify_fatal=1", "--verify_state_save=0", "--randseed=4242", "--verify_only"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "verify" in (r.stdout + r.stderr).lower(), r
