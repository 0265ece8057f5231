"""Rebuild under a running daemon (issue 12 item 2): a drive starts failing (real
write errors from nbdkit's error filter behind nbdfuse) while fio writes and
verifies a RAID1 or RAID5 LUN; the daemon fails the drive, starts a rebuild task
by itself, and fio sees no error and no verify failure through the failure, the
whole rebuild and after it. Then the data is checked again after a restart and
with `vsand check --parity`. Also kill -9 at chosen points of a rebuild (the next
start resumes it and nothing is lost), a pool with no room to rebuild, and ext4
mounted through nbdfuse and a loop device across a failure and its rebuild."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from blockstack import fresh_ext4, need_kernel_path, remount_checked, tree_sums, write_file
from conftest import ROOT, Daemon, healthy, need, run
from flakydrive import MiB, daemon_with, qemu_io, wait_for
from vsand.control.client import ControlError

LUN = 96 * MiB
VSANCTL = [sys.executable, "-m", "vsand.cli.vsanctl"]


def need_fio_nbd() -> None:
    need("fio")
    r = subprocess.run(["fio", "--enghelp=nbd"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0 or "uri" not in r.stdout:
        pytest.skip("fio was built without the nbd engine")


def fio_cmd(uri: str, *extra: str) -> list[str]:
    return ["fio", "--name=rebuild", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
            "--bsrange=4k-128k", f"--size={LUN}", "--iodepth=8", "--verify=crc32c",
            "--verify_fatal=1", "--verify_state_save=0", "--randseed=777", "--fsync=16",
            "--output-format=json", *extra]


def fio_result(r: subprocess.CompletedProcess | tuple) -> dict:
    out, err, rc = r
    assert rc == 0, f"fio -> {rc}\n{out[-3000:]}\n{err[-3000:]}"
    assert "verify:" not in err and "bad magic" not in err, err[-3000:]
    job = json.loads(out[out.index("{"):])["jobs"][0]
    assert job["error"] == 0, job
    return job


def rebuilds(d: Daemon) -> list[dict]:
    return [t for t in d.ctl("task.list") if t["kind"] == "rebuild"]


def drive(d: Daemon, index: int) -> dict:
    return next(x for x in d.ctl("drive.list") if x["index"] == index)


def reads_back(uri: str, *cmds: str) -> None:
    """qemu-io ``cmds`` (reads with -P) succeed and every pattern matches."""
    r = qemu_io(uri, *cmds)
    assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr


def end_clean(d: Daemon, stack) -> None:
    """Detaches ``stack`` (nothing left behind), the daemon healthy, stopped cleanly
    and `vsand check --parity` clean."""
    assert not stack.detach()
    healthy(d)
    assert d.stop() == 0
    check_parity(d)


def check_parity(d: Daemon) -> None:
    """`vsand check --parity` on the daemon's drives (its state dir, or the --drive
    paths it was given)."""
    drives = [d.args[i + 1] for i, a in enumerate(d.args) if a == "--drive"]
    where = [a for p in drives for a in ("--drive", p)] or [d.state_dir]
    r = run([sys.executable, "-m", "vsand", "check", "--parity", *where], check=False, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("raid,plain", [(5, 5), (1, 9)])     # room for a spare member / pair
@pytest.mark.parametrize("failing_drive", ["pwrite"], indirect=True)
def test_fio_verify_through_a_drive_failure_and_its_rebuild(tmp_path, failing_drive, raid, plain):
    need_fio_nbd()
    flaky, trigger = failing_drive
    # a slow rebuild, so that fio's writes and verifies run all through it
    d = daemon_with(tmp_path, flaky, "--task-rate-mib", "8", plain=plain).start()
    try:
        index = next(x["index"] for x in d.ctl("drive.list") if x["path"] == flaky)
        d.ctl("lun.create", name="v", size=LUN, raid=raid)
        uri = d.uri("v")
        fio = subprocess.Popen(fio_cmd(uri, "--loops=3"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        # the drive starts failing once fio has written a good part of the LUN
        wait_for("fio's first writes", lambda: fio.poll() is not None
                 or d.ctl("lun.show", name="v")["allocated"] >= LUN // 2)
        trigger.touch()
        saw_running = False
        while fio.poll() is None:
            saw_running |= any(t["state"] == "running" for t in rebuilds(d))
            time.sleep(0.05)
        out, err = fio.communicate()
        job = fio_result((out, err, fio.returncode))
        assert job["write"]["io_bytes"] == 3 * LUN and job["read"]["io_bytes"] == 3 * LUN
        info = drive(d, index)
        assert info["failed"] and "missed a write" in info["state"], info
        assert saw_running, "fio ended before the rebuild ran: the test proves nothing"
        task = rebuilds(d)[0]
        r = run(VSANCTL + ["--control", d.control, "task", "wait", str(task["id"])], check=False, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        task = rebuilds(d)[0]
        assert task["state"] == "done" and task["done"] > 0, task
        assert drive(d, index)["rebuild_left"] == 0
        r = run(VSANCTL + ["--control", d.control, "drive", "list"])
        assert "FAILED, rebuilt" in r.stdout, r.stdout
        log = d.read_log()
        assert f"drive {index} ({flaky}) failed" in log and "rebuilding" in log, log
        fio_result(_run(fio_cmd(uri, "--verify_only")))
        healthy(d)
        assert d.stop() == 0, d.read_log()
        check_parity(d)
        trigger.unlink()
        d.start()
        fio_result(_run(fio_cmd(d.uri("v"), "--verify_only")))
        assert rebuilds(d)[-1]["state"] == "done", "a restart found something left to rebuild"
    finally:
        d.stop()


def _run(cmd) -> tuple:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return r.stdout, r.stderr, r.returncode


@pytest.mark.parametrize("point", ["rebuild.before_copy:2", "rebuild.after_copy:3",
                                   "rebuild.after_switch:3", "rebuild.after_commit:1"])
def test_kill_9_during_a_rebuild_resumes_and_loses_nothing(tmp_path, point):
    """The process kills itself at ``point`` (name:n, the n-th time it passes it);
    the rebuild is slowed (4 MiB/s) so that its periodic commit (every 5 s) comes
    before its end."""
    need("qemu-io")
    d = Daemon(tmp_path / "state", drives=6, drive_size="256M", extra=["--task-rate-mib", "4"]).start()
    try:
        d.ctl("lun.create", name="r5", size=128 * MiB, raid=5)
        uri = d.uri("r5")
        r = qemu_io(uri, "write -P 0x5a 0 128M", "flush")
        assert r.returncode == 0, r.stdout + r.stderr
        victim = next(x["index"] for x in d.ctl("drive.list") if not x["quorum"])
        assert d.stop() == 0
        d.env = {"VSAND_CRASHPOINT": point}
        d.start()
        d.ctl("drive.fail", index=victim)
        wait_for("the crash", lambda: not d.alive(), timeout=120)
        assert d.proc.returncode == -signal.SIGKILL, d.read_log()
        d.env = {}
        d.start()
        assert "resuming background task" in d.read_log(), d.read_log()
        reads_back(uri, "read -P 0x5a 0 128M")
        task = rebuilds(d)[-1]
        d.ctl("task.set", id=task["id"], rate=0)
        r = run(VSANCTL + ["--control", d.control, "task", "wait", str(task["id"])], check=False, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert drive(d, victim)["rebuild_left"] == 0
        reads_back(uri, "read -P 0x5a 0 128M")
        healthy(d)
        assert d.stop() == 0
        check_parity(d)
    finally:
        d.stop()


def test_no_room_to_rebuild_is_said_and_the_pool_runs_degraded(tmp_path):
    """Five drives: a RAID5 RStore uses all of them, so a failed one's members have
    nowhere to go. The rebuild task ends failed with the reason, the drive list
    says what is left, the data reads back; `pool rebuild` refuses with the reason
    on a healthy pool."""
    need("qemu-io")
    d = Daemon(tmp_path / "state", drives=5, drive_size="256M").start()
    try:
        ctl = VSANCTL + ["--control", d.control]
        r = run(ctl + ["pool", "rebuild"], check=False)
        assert r.returncode != 0 and "nothing to rebuild" in r.stderr and "Traceback" not in r.stderr, r
        d.ctl("lun.create", name="r5", size=32 * MiB, raid=5)
        uri = d.uri("r5")
        r = qemu_io(uri, "write -P 0x33 0 32M", "flush")
        assert r.returncode == 0, r.stdout + r.stderr
        victim = next(x["index"] for x in d.ctl("drive.list") if not x["quorum"])
        d.ctl("drive.fail", index=victim)
        wait_for("the rebuild to end", lambda: rebuilds(d) and rebuilds(d)[-1]["state"] not in ("queued", "running"))
        task = rebuilds(d)[-1]
        assert task["state"] == "failed" and "cannot be rebuilt" in task["error"], task
        info = drive(d, victim)
        assert info["rebuild_left"] > 0, info
        r = run(ctl + ["drive", "list"])
        assert f"FAILED, {info['rebuild_left']} to rebuild" in r.stdout, r.stdout
        assert "cannot be rebuilt" in d.read_log()
        reads_back(uri, "read -P 0x33 0 32M")
        r = run(ctl + ["pool", "rebuild"], check=False)      # still no room: it fails again, with the reason
        assert r.returncode == 0 and "rebuild started as task" in r.stdout, r
        healthy(d)
    finally:
        d.stop()


def test_ext4_through_nbdfuse_and_loop_across_a_failure_and_its_rebuild(tmp_path):
    """A mounted ext4 on a RAID5 LUN (nbdfuse + loop device) keeps every file's
    sha256 while a drive is failed, while it is rebuilt (files written meanwhile)
    and after; e2fsck clean, `vsand check --parity` clean."""
    need_kernel_path()
    # a slow rebuild (4 MiB/s), so that the second set of files is written during it
    d = Daemon(tmp_path / "state", drives=6, drive_size="512M", extra=["--task-rate-mib", "4"]).start()
    stack = None
    try:
        d.ctl("lun.create", name="fs", size=256 * MiB, raid=5)
        stack = fresh_ext4(tmp_path / "stack", d.uri("fs"))
        want = {}
        for i in range(24):
            want.update({f"a/{i}": write_file(stack.mnt, f"a/{i}", os.urandom((i + 1) * 97 * 1024))})
        run(["sync"])
        victim = next(x["index"] for x in d.ctl("drive.list") if not x["quorum"])
        d.ctl("drive.fail", index=victim)
        for i in range(24):          # written during the rebuild
            want.update({f"b/{i}": write_file(stack.mnt, f"b/{i}", os.urandom((i + 1) * 61 * 1024))})
        run(["sync"])
        assert tree_sums(stack.mnt) == want
        task = rebuilds(d)[-1]
        assert task["state"] == "running", ("the rebuild ended before the files were written", task)
        d.ctl("task.set", id=task["id"], rate=0)
        r = run(VSANCTL + ["--control", d.control, "task", "wait", str(task["id"])], check=False, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert drive(d, victim)["rebuild_left"] == 0
        remount_checked(stack, want, "the rebuilt LUN")
        stack, s = None, stack
        end_clean(d, s)
    finally:
        if stack is not None:
            stack.detach()
        d.stop()


def test_a_second_failure_during_a_rebuild_fails_only_what_it_took(tmp_path):
    """Two drives of eight, in different RAID1 pairs, fail, the second while the
    first is being rebuilt (slowly). The RAID1 LUN loses nothing (each column still
    has a copy); on the RAID5 LUN, every 1 MiB reads back right or gives EIO (the
    stripes that had members on both), never other bytes; the daemon lives, and
    the rebuild says what was lost."""
    need("qemu-io")
    d = Daemon(tmp_path / "state", drives=8, drive_size="256M", extra=["--task-rate-mib", "1"]).start()
    try:
        d.ctl("lun.create", name="r5", size=64 * MiB, raid=5)
        d.ctl("lun.create", name="r1", size=64 * MiB, raid=1)
        for name, p in (("r5", 0x2d), ("r1", 0x1e)):
            r = qemu_io(d.uri(name), f"write -P {p:#x} 0 64M", "flush")
            assert r.returncode == 0, r.stdout + r.stderr
        a, b = 3, 4           # no metadata copy; pairs (2, 3) and (4, 5)
        d.ctl("drive.fail", index=a)
        wait_for("the rebuild to start", lambda: rebuilds(d) and rebuilds(d)[-1]["state"] == "running")
        d.ctl("drive.fail", index=b)
        reads_back(d.uri("r1"), "read -P 0x1e 0 64M")
        lost = 0
        for mib in range(64):
            r = qemu_io(d.uri("r5"), f"read -P 0x2d {mib}M 1M")
            assert "verification failed" not in r.stdout, r.stdout
            if r.returncode:
                assert "Input/output error" in r.stdout + r.stderr, r.stdout + r.stderr
                lost += 1
        assert d.alive()
        task = rebuilds(d)[-1]
        try:
            d.ctl("task.set", id=task["id"], rate=0)
        except ControlError as e:         # it may have ended already: little was left to rebuild
            assert "already finished" in str(e), e
        wait_for("the rebuild to end", lambda: rebuilds(d)[-1]["state"] not in ("queued", "running"), timeout=300)
        log = d.read_log()
        if lost:
            assert "lost data on more failed drives than their redundancy covers" in log, log
        reads_back(d.uri("r1"), "read -P 0x1e 0 64M")
        qemu_io(d.uri("r5"), "write -P 0x3e 0 64M")     # EIO where lost: the daemon lives on
        assert d.alive()
        healthy(d)
    finally:
        d.stop()


def test_drive_add_gives_a_rebuild_the_room_it_lacked(tmp_path):
    """Five drives, RAID5: a failed drive has nowhere to go. `vsanctl drive add`
    (the next simulated drive) adds capacity at once; the rebuild that lacked room
    starts by itself and completes; the drive is there after kill -9 and a restart;
    bad adds are refused with the reason. Also an image file given by PATH."""
    need("qemu-io")
    d = Daemon(tmp_path / "state", drives=5, drive_size="256M").start()
    try:
        ctl = VSANCTL + ["--control", d.control]
        d.ctl("lun.create", name="r5", size=32 * MiB, raid=5)
        uri = d.uri("r5")
        r = qemu_io(uri, "write -P 0x77 0 32M", "flush")
        assert r.returncode == 0, r.stdout + r.stderr
        victim = next(x["index"] for x in d.ctl("drive.list") if not x["quorum"])
        d.ctl("drive.fail", index=victim)
        wait_for("the rebuild to give up", lambda: rebuilds(d) and rebuilds(d)[-1]["state"] == "failed")
        free = d.ctl("status")["free"]
        r = run(ctl + ["drive", "add"])
        assert "drive 5 (" in r.stdout and "added" in r.stdout, r.stdout
        assert d.ctl("status")["free"] > free
        wait_for("the rebuild onto the new drive", lambda: rebuilds(d)[-1]["state"] == "done", timeout=120)
        assert drive(d, victim)["rebuild_left"] == 0
        assert "added to LDAD default" in d.read_log()
        # refused, with the reason
        r = run(ctl + ["drive", "add", d.ctl("drive.list")[0]["path"]], check=False)
        assert r.returncode == 1 and "is a drive of this pool already" in r.stderr, r
        other = Daemon(tmp_path / "other", drives=4, drive_size="128M").start()
        other_drive = other.ctl("drive.list")[0]["path"]
        other.stop()
        r = run(ctl + ["drive", "add", other_drive], check=False)
        assert r.returncode == 1 and "another vsand pool" in r.stderr and "Traceback" not in r.stderr, r
        r = run(ctl + ["drive", "add", str(tmp_path / "nothere.img")], check=False)
        assert r.returncode == 1 and "does not exist" in r.stderr, r
        r = run(ctl + ["drive", "add", "--size", "lots"], check=False)
        assert r.returncode == 2, r
        r = run(ctl + ["drive", "add", str(tmp_path / "extra.img"), "--size", "256M"])
        assert "drive 6 (" in r.stdout, r.stdout
        d.stop(signal.SIGKILL)                    # both adds were durable when they returned
        d.start()
        paths = {x["index"]: x for x in d.ctl("drive.list")}
        assert 5 in paths and 6 in paths and not paths[6]["failed"], paths
        assert paths[6]["path"] == str(tmp_path / "extra.img")
        reads_back(uri, "read -P 0x77 0 32M")
        healthy(d)
        assert d.stop() == 0
        check_parity(d)
    finally:
        d.stop()

