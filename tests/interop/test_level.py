"""Leveling under a running daemon (issue 12 item 4): a drive added to a pool
with data starts a `level` task by itself, which moves PSEGs onto it until the
drives' used fractions are within a few points; ext4 mounted through nbdfuse and
a loop device keeps every file across the drive add, the leveling (files written
during it) and a drive removal; `vsand check --parity` is clean after each;
kill -9 in the middle of leveling resumes and loses nothing."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from blockstack import Stack, fresh_ext4, need_kernel_path, remount_checked, tree_sums, write_file
from conftest import Daemon, healthy, need, run
from flakydrive import MiB, qemu_io, wait_for, write_luns
from test_rebuild import check_parity, drive, end_clean, reads_back

VSANCTL = [sys.executable, "-m", "vsand.cli.vsanctl"]
TOLERANCE = 5.0          # points of used fraction (vsand/disk/level.py)


def levels(d: Daemon) -> list[dict]:
    return [t for t in d.ctl("task.list") if t["kind"] == "level"]


def used(d: Daemon) -> dict[int, float]:
    """`drive list`'s USED, in percent, per working drive."""
    return {x["index"]: 100 * (x["psegs"] - x["free_psegs"]) / x["psegs"]
            for x in d.ctl("drive.list") if x["state"] == "ok"}


def wait_task(d: Daemon, task: dict) -> None:
    d.ctl("task.set", id=task["id"], rate=0)
    r = run(VSANCTL + ["--control", d.control, "task", "wait", str(task["id"])], check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def parity_between(d: Daemon, stack, want: dict) -> Stack:
    """The file system put away, the daemon stopped, `vsand check --parity` clean,
    the daemon started again and the file system mounted again, every file intact."""
    assert not stack.detach()
    assert d.stop() == 0
    check_parity(d)
    d.start()
    again = Stack(os.path.dirname(stack.mnt), stack.uri)
    again.attach()
    again.mount()
    assert tree_sums(again.mnt) == want
    return again


def test_ext4_across_drive_add_leveling_and_drive_remove(tmp_path):
    """ext4 on a RAID5 LUN keeps every file through a drive add, the leveling it
    starts (files written during it) and a drive removal (files written during
    it): e2fsck clean after each, `vsand check --parity` clean after each."""
    need_kernel_path()
    # slow moves (4 MiB/s), so that files are written while the leveling runs
    d = Daemon(tmp_path / "state", drives=6, drive_size="256M", extra=["--task-rate-mib", "4"]).start()
    stack = None
    try:
        d.ctl("lun.create", name="fs", size=320 * MiB, raid=5)
        stack = fresh_ext4(tmp_path / "stack", d.uri("fs"))
        want = {"big": write_file(stack.mnt, "big", os.urandom(160 * MiB))}
        for i in range(16):
            want.update({f"a/{i}": write_file(stack.mnt, f"a/{i}", os.urandom((i + 1) * 97 * 1024))})
        run(["sync"])
        before = used(d)
        run(VSANCTL + ["--control", d.control, "drive", "add"])
        wait_for("a level task", lambda: levels(d), timeout=30)
        for i in range(16):           # written during the leveling
            want.update({f"b/{i}": write_file(stack.mnt, f"b/{i}", os.urandom((i + 1) * 61 * 1024))})
        run(["sync"])
        task = levels(d)[-1]
        assert task["state"] == "running", ("the leveling ended before the files were written", task)
        wait_task(d, task)
        after = used(d)
        assert after[6] > 0 and max(after.values()) < max(before.values()), (before, after)
        reserve = 100 * 6 / min(x["psegs"] for x in d.ctl("drive.list"))   # a quorum drive's
        assert max(after.values()) - min(after.values()) <= TOLERANCE + reserve, after
        r = run(VSANCTL + ["--control", d.control, "pool", "level"], check=False)
        assert r.returncode == 1 and "nothing to level" in r.stderr, r
        assert tree_sums(stack.mnt) == want
        remount_checked(stack, want, "the leveled LUN")
        stack = parity_between(d, stack, want)
        victim = next(x["index"] for x in d.ctl("drive.list") if not x["quorum"] and x["index"] != 6)
        run(VSANCTL + ["--control", d.control, "drive", "remove", str(victim)])
        for i in range(8):            # written during the removal
            want.update({f"c/{i}": write_file(stack.mnt, f"c/{i}", os.urandom((i + 1) * 83 * 1024))})
        run(["sync"])
        removal = [t for t in d.ctl("task.list") if t["kind"] == "rebuild"][-1]
        wait_task(d, removal)
        wait_for(f"drive {victim} to be let go", lambda: drive(d, victim)["state"] == "removed", timeout=60)
        remount_checked(stack, want, "the LUN after a drive removal")
        stack, s = None, stack
        end_clean(d, s)
    finally:
        if stack is not None:
            stack.detach()
        d.stop()


@pytest.mark.parametrize("point", ["rebuild.after_switch:3", "level.after_commit:1"])
def test_kill_9_during_leveling_resumes_and_loses_nothing(tmp_path, point):
    need("qemu-io")
    d = Daemon(tmp_path / "state", drives=6, drive_size="256M", extra=["--task-rate-mib", "2"]).start()
    try:
        pats = {0: 0x40, 5: 0x45}
        write_luns(d, pats, 128 * MiB)
        assert d.stop() == 0
        d.env = {"VSAND_CRASHPOINT": point}
        d.start()
        d.ctl("drive.add")
        wait_for("the crash", lambda: not d.alive(), timeout=120)
        assert d.proc.returncode == -signal.SIGKILL, d.read_log()
        d.env = {}
        d.start()
        assert "resuming background task" in d.read_log(), d.read_log()
        for raid, p in pats.items():
            reads_back(d.uri(f"r{raid}"), f"read -P {p:#x} 0 128M")
        wait_task(d, levels(d)[-1])
        assert used(d)[6] > 0
        for raid, p in pats.items():
            reads_back(d.uri(f"r{raid}"), f"read -P {p:#x} 0 128M")
        healthy(d)
        assert d.stop() == 0
        check_parity(d)
    finally:
        d.stop()


def test_a_drive_failing_during_leveling_is_rebuilt_first(tmp_path):
    """Leveling holds the pool's task target: a failure cancels it, the rebuild
    runs, and leveling starts again once the rebuild is done. Also `drive replace`,
    whose add starts leveling before its remove needs the rebuild task."""
    need("qemu-io")
    d = Daemon(tmp_path / "state", drives=6, drive_size="256M", extra=["--task-rate-mib", "2"]).start()
    try:
        d.ctl("lun.create", name="r5", size=192 * MiB, raid=5)
        r = qemu_io(d.uri("r5"), "write -P 0x46 0 192M", "flush")
        assert r.returncode == 0, r.stdout + r.stderr
        d.ctl("drive.add")
        wait_for("a level task", lambda: levels(d) and levels(d)[-1]["state"] == "running", timeout=30)
        victim = next(x["index"] for x in d.ctl("drive.list") if not x["quorum"] and x["index"] != 6)
        d.ctl("drive.fail", index=victim)
        tasks = d.ctl("task.list")
        assert [t["state"] for t in tasks if t["kind"] == "level"][-1] == "cancelled", tasks
        rebuild = [t for t in tasks if t["kind"] == "rebuild"][-1]
        wait_task(d, rebuild)
        assert drive(d, victim)["rebuild_left"] == 0
        # the rebuild put the lost members on the emptiest drives (the new one first):
        # leveling starts again only if that left the drives uneven
        if len(levels(d)) > 1:
            wait_task(d, levels(d)[-1])
        r = run(VSANCTL + ["--control", d.control, "pool", "level"], check=False)
        assert r.returncode == 1 and "nothing to level" in r.stderr, (r, d.ctl("drive.list"))
        reads_back(d.uri("r5"), "read -P 0x46 0 192M")
        r = run(VSANCTL + ["--control", d.control, "drive", "replace", "2"])
        assert "added" in r.stdout, r.stdout
        wait_for("drive 2 to be let go", lambda: drive(d, 2)["state"] == "removed", timeout=120)
        reads_back(d.uri("r5"), "read -P 0x46 0 192M")
        healthy(d)
        assert d.stop() == 0
        check_parity(d)
    finally:
        d.stop()
