"""A drive that really fails: an image served by ``nbdkit file`` with the error
filter, seen by vsand as a FUSE file (nbdfuse). While the filter's trigger file
exists, every call of one kind (pread or pwrite) on that drive fails with EIO.
Or a drive that turns slow: the rate filter, its limit written at run time."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from blockstack import Stack
from daemonkit import Daemon, need, run

MiB = 1 << 20
SIZE = 256 * MiB


def qemu_io(uri: str, *cmds: str) -> subprocess.CompletedProcess:
    args = ["qemu-io", "-t", "none", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    return run(args + [uri], check=False, timeout=120)


def wait_for(what, cond, timeout=60):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def failing_drive(tmp_path, request):
    """The generator behind the ``failing_drive`` fixture (conftest.py): yields
    (path vsand opens, trigger file); calls of the kind ``request.param`` (pread,
    pwrite; default pread) fail with EIO while the trigger exists; with "slow",
    the drive's bandwidth is limited to what the trigger says (e.g. "1M": 1 Mbit/s,
    nbdkit's rate filter) once it is written."""
    need("nbdkit", "nbdfuse", "qemu-io")
    if os.geteuid() != 0:
        pytest.skip("nbdfuse's FUSE mount needs root here")
    kind = getattr(request, "param", "pread")
    img = tmp_path / "flaky.raw"
    with open(img, "wb") as f:
        f.truncate(SIZE)
    trigger = tmp_path / "fail-reads"
    sock = tmp_path / "nbdkit.sock"
    if kind == "slow":      # the rate filter reads its limit (bits/s) from the trigger
        filters = ["--filter=rate", "file", str(img), f"rate-file={trigger}"]
    else:
        filters = ["--filter=error", "file", str(img), "error=EIO", f"error-{kind}-rate=100%",
                   f"error-{kind}-file={trigger}"]
    kit = subprocess.Popen(["nbdkit", "-f", "-U", str(sock), *filters],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack = Stack(str(tmp_path / "stack"), f"nbd+unix:///?socket={sock}")
    try:
        wait_for("nbdkit's socket", lambda: sock.exists() or kit.poll() is not None)
        assert kit.poll() is None, "nbdkit exited"
        stack.fuse = subprocess.Popen(["nbdfuse", stack.fusedir, stack.uri],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for("nbdfuse's file", lambda: os.path.exists(stack.file))
        yield stack.file, trigger
    finally:
        assert not stack.detach()
        kit.terminate()
        kit.wait(30)


def daemon_with(tmp_path, flaky: str, *extra: str, plain: int = 4) -> Daemon:
    """A daemon on ``plain`` image files and ``flaky`` (the last drive), not started."""
    files = []
    for i in range(plain):
        p = tmp_path / f"d{i}.img"
        with open(p, "wb") as f:
            f.truncate(SIZE)
        files.append(str(p))
    return Daemon(tmp_path / "state", extra=[a for p in (*files, flaky) for a in ("--drive", p)]
                  + ["--io", "buffered", *extra])


def filled_lun(d: Daemon, flaky: str, raid: int, pattern: int) -> tuple[int, str]:
    """(the flaky drive's index, the URI of a 64 MiB LUN of ``raid`` full of ``pattern``,
    flushed)."""
    index = next(x["index"] for x in d.ctl("drive.list") if x["path"] == flaky)
    d.ctl("lun.create", name=f"r{raid}", size=64 * MiB, raid=raid)
    uri = d.uri(f"r{raid}")
    r = qemu_io(uri, f"write -P {pattern:#x} 0 64M", "flush")
    assert r.returncode == 0, r.stdout + r.stderr
    return index, uri


def write_luns(d: Daemon, pats: dict, size: int) -> None:
    """LUN ``r{raid}`` of ``size`` per RAID level in ``pats``, filled with its byte
    pattern by qemu-io and flushed."""
    for raid, p in pats.items():
        d.ctl("lun.create", name=f"r{raid}", size=size, raid=raid)
        r = qemu_io(d.uri(f"r{raid}"), f"write -P {p:#x} 0 {size >> 20}M", "flush")
        assert r.returncode == 0, r.stdout + r.stderr
