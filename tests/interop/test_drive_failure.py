"""A drive that really fails under a running daemon (issue 12 items 1 and 6): one of
the five drives is an image served by ``nbdkit file`` with the error filter, seen
by vsand as a FUSE file (nbdfuse). When the filter's trigger file appears, every
read of that drive fails with EIO: the RAID5 LUN still reads back byte for byte
(no client-visible error), the daemon logs each error and fails the drive at the
limit, and the failure survives a kill -9 after the next FLUSH. Also `vsanctl
drive fail` by hand, a drive that turns slower than the drive timeout, and drive
images truncated or deleted under the running daemon."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from conftest import Daemon, healthy, need, run
from flakydrive import MiB, daemon_with, filled_lun, qemu_io
from vsand.disk.detector import ERROR_LIMIT

VSANCTL = [sys.executable, "-m", "vsand.cli.vsanctl"]


def test_read_errors_on_a_raid5_drive_are_served_from_parity_and_fail_the_drive(tmp_path, failing_drive):
    flaky, trigger = failing_drive
    d = daemon_with(tmp_path, flaky).start()
    try:
        index, uri = filled_lun(d, flaky, 5, 0x3c)
        # the drive's pages out of the cache, so that vsand's reads reach nbdkit
        fd = os.open(flaky, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        trigger.touch()
        r = qemu_io(uri, "read -P 0x3c 0 64M")
        assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
        info = next(x for x in d.ctl("drive.list") if x["index"] == index)
        assert info["failed"] and "I/O errors" in info["state"], info
        assert info["io_errors"] == ERROR_LIMIT
        log = d.read_log()
        assert log.count("I/O error") >= ERROR_LIMIT - 1 and f"drive {index} ({flaky}) failed" in log, log
        # a FLUSH commits the failure with it; the machine then dies
        r = qemu_io(uri, "write -P 0x5e 1M 64k", "flush")
        assert r.returncode == 0, r.stdout + r.stderr
        d.stop(signal.SIGKILL)
        trigger.unlink()             # the drive reads again, but it is failed for good
        d.start()
        info = next(x for x in d.ctl("drive.list") if x["index"] == index)
        assert info["failed"], info
        r = qemu_io(uri, "read -P 0x3c 0 1M", "read -P 0x5e 1M 64k", "read -P 0x3c 1114112 65994752")
        assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
        healthy(d)
    finally:
        d.stop()


@pytest.mark.parametrize("failing_drive", ["pwrite"], indirect=True)
def test_a_raid1_copy_that_misses_a_write_is_failed_at_once(tmp_path, failing_drive):
    """Write errors: the drive is failed at the first one (whatever the limit), the
    client's write and FLUSH succeed, and everything reads back, also after kill -9."""
    flaky, trigger = failing_drive
    d = daemon_with(tmp_path, flaky, "--drive-error-limit", "100", plain=7).start()   # a RAID1 RStore spans 8 drives
    try:
        index, uri = filled_lun(d, flaky, 1, 0x11)
        trigger.touch()
        r = qemu_io(uri, "write -P 0x22 0 64M", "flush")
        assert r.returncode == 0, r.stdout + r.stderr
        info = next(x for x in d.ctl("drive.list") if x["index"] == index)
        assert info["failed"] and "missed a write" in info["state"] and info["io_errors"] == 1, info
        r = qemu_io(uri, "read -P 0x22 0 64M")
        assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
        d.stop(signal.SIGKILL)
        trigger.unlink()
        d.start()
        assert next(x for x in d.ctl("drive.list") if x["index"] == index)["failed"]
        r = qemu_io(uri, "read -P 0x22 0 64M")
        assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
        healthy(d)
    finally:
        d.stop()


def test_vsanctl_drive_fail(tmp_path):
    need("qemu-io")
    d = Daemon(tmp_path / "state", drive_size="256M").start()
    try:
        d.ctl("lun.create", name="m", size=32 * MiB, raid=1)
        r = qemu_io(d.uri("m"), "write -P 0x77 0 32M", "flush")
        assert r.returncode == 0, r.stdout + r.stderr
        ctl = VSANCTL + ["--control", d.control]
        r = run(ctl + ["drive", "fail", "5"])
        assert "drive 5" in r.stdout and "failed by command" in r.stdout, r.stdout
        r = run(ctl + ["drive", "list"])
        row = next(line for line in r.stdout.splitlines() if line.split()[:1] == ["5"])
        assert "FAILED" in row, r.stdout
        r = run(ctl + ["drive", "fail", "5"], check=False)
        assert r.returncode != 0 and "failed already" in r.stderr and "Traceback" not in r.stderr, r
        r = run(ctl + ["drive", "fail", "42"], check=False)
        assert r.returncode != 0 and "no drive 42" in r.stderr and "Traceback" not in r.stderr, r
        r = run(ctl + ["drive", "fail", "x"], check=False)
        assert r.returncode == 2 and "invalid int value" in r.stderr, r
        assert "failed by command" in d.read_log()
        r = qemu_io(d.uri("m"), "read -P 0x77 0 32M")
        assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
        d.stop(signal.SIGKILL)                     # the failure was durable when the command returned
        d.start()
        assert next(x for x in d.ctl("drive.list") if x["index"] == 5)["failed"]
        healthy(d)
    finally:
        d.stop()


def test_a_drive_image_truncated_while_the_daemon_runs(tmp_path):
    """Item 6: an image file cut short under the running daemon reads as I/O errors
    (not zeros), the RAID5 LUN reads back whole from parity, the drive is failed."""
    need("qemu-io")
    d = Daemon(tmp_path / "state", drives=5, drive_size="256M").start()
    try:
        victim = next(x for x in d.ctl("drive.list") if not x["quorum"])
        index, uri = filled_lun(d, victim["path"], 5, 0x6b)
        os.truncate(victim["path"], 0)
        r = qemu_io(uri, "read -P 0x6b 0 64M")
        assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
        info = next(x for x in d.ctl("drive.list") if x["index"] == index)
        assert info["failed"] and "truncated" in info["state"], info
        healthy(d)
    finally:
        d.stop()


def _uncache(path: str) -> None:
    """The drive's pages out of the page cache, so that vsand's reads reach it."""
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


@pytest.mark.parametrize("failing_drive", ["slow"], indirect=True)
def test_a_drive_slower_than_the_timeout_is_failed_and_rebuilt(tmp_path, failing_drive):
    """Item 1 and 6: the sixth drive turns slow (nbdkit's rate filter, 1 Mbit/s, set
    mid-run): every read of it that takes longer than --drive-timeout counts as an
    I/O error and is served from parity, so the client sees only latency; at the
    limit the drive is failed, the rebuild moves its members, and everything reads
    back after a restart."""
    flaky, trigger = failing_drive
    d = daemon_with(tmp_path, flaky, "--drive-timeout", "1s", plain=5).start()
    try:
        index, uri = filled_lun(d, flaky, 5, 0x5c)
        _uncache(flaky)
        trigger.write_text("1M")
        r = qemu_io(uri, "read -P 0x5c 0 64M")
        assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
        info = next(x for x in d.ctl("drive.list") if x["index"] == index)
        assert info["failed"] and "drive timeout" in info["state"], info
        log = d.read_log()
        assert "over the 1 s drive timeout" in log, log
        task = [t for t in d.ctl("task.list") if t["kind"] == "rebuild"][-1]
        r = run(VSANCTL + ["--control", d.control, "task", "wait", str(task["id"])], check=False, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        r = qemu_io(uri, "read -P 0x5c 0 64M")
        assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
        healthy(d)
        assert d.stop() == 0
        d.start()
        r = qemu_io(uri, "read -P 0x5c 0 64M")
        assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
    finally:
        d.stop()


def test_a_drive_image_deleted_while_the_daemon_runs(tmp_path):
    """Item 6: an image file deleted under the running daemon stays open (Linux
    keeps an unlinked file while a descriptor holds it), so nothing changes until
    the next start, which finds the drive missing, fails it and rebuilds what it
    held; nothing is lost."""
    need("qemu-io")
    d = Daemon(tmp_path / "state", drives=6, drive_size="256M").start()
    try:
        victim = next(x for x in d.ctl("drive.list") if not x["quorum"])
        index, uri = filled_lun(d, victim["path"], 5, 0x6d)
        os.unlink(victim["path"])
        r = qemu_io(uri, "write -P 0x6e 0 1M", "flush", "read -P 0x6e 0 1M", "read -P 0x6d 1M 63M")
        assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
        assert d.stop() == 0
        d.start()
        info = next(x for x in d.ctl("drive.list") if x["index"] == index)
        assert info["failed"], info
        task = [t for t in d.ctl("task.list") if t["kind"] == "rebuild"][-1]
        r = run(VSANCTL + ["--control", d.control, "task", "wait", str(task["id"])], check=False, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        r = qemu_io(uri, "read -P 0x6e 0 1M", "read -P 0x6d 1M 63M")
        assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
        healthy(d)
    finally:
        d.stop()
