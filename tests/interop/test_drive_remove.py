"""Drives leaving a running daemon (issue 12 item 3): `drive remove` empties a
drive through the rebuild task (its data copied from itself, RAID0 too), moves the
pool's metadata copy off it first when it holds one, then lets it go; `drive
replace` adds one and removes one. kill -9 at chosen points of a removal: the next
start resumes it and nothing is lost; once let go, the drive's image can be
deleted and the pool starts without it."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from conftest import Daemon, healthy, need, run
from flakydrive import MiB, qemu_io, wait_for, write_luns
from test_rebuild import check_parity, drive, reads_back, rebuilds

VSANCTL = [sys.executable, "-m", "vsand.cli.vsanctl"]


def test_drive_remove_and_replace(tmp_path):
    """`drive replace` adds a drive and removes one: its RAID0/1/5 data moves (the
    new drive, the emptiest, takes a share) and it is let go; a removal whose RAID1
    columns would have no pair to go to is refused with the reason, as is one of a
    drive that does not exist; a failed drive, once rebuilt, is let go at once. The
    data reads back, also after a restart, and `vsand check --parity` is clean."""
    need("qemu-io")
    d = Daemon(tmp_path / "state", drives=10, drive_size="256M").start()
    try:
        ctl = VSANCTL + ["--control", d.control]
        pats = {0: 0x10, 1: 0x11, 5: 0x15}
        for raid, p in pats.items():
            d.ctl("lun.create", name=f"r{raid}", size=32 * MiB, raid=raid)
            r = qemu_io(d.uri(f"r{raid}"), f"write -P {p:#x} 0 32M", "flush")
            assert r.returncode == 0, r.stdout + r.stderr
        r = run(ctl + ["drive", "remove", "42"], check=False)
        assert r.returncode == 1 and "no drive 42" in r.stderr, r
        r = run(ctl + ["drive", "replace", "7"])
        assert "drive 10 (" in r.stdout and "added" in r.stdout, r.stdout
        wait_for("drive 7 to be let go", lambda: drive(d, 7)["state"] == "removed", timeout=120)
        assert drive(d, 10)["free_psegs"] < drive(d, 10)["psegs"]      # the new drive took a share
        r = run(ctl + ["drive", "list"])
        assert "removed" in r.stdout, r.stdout
        # pair (6, 7) is gone: the RAID1 columns on pair (8, 9) would have nowhere to go
        r = run(ctl + ["drive", "remove", "9"], check=False)
        assert r.returncode == 1 and "nowhere to go" in r.stderr, r
        assert drive(d, 9)["state"] == "ok"
        d.ctl("lun.delete", name="r0")          # a failed drive takes RAID0 data with it
        d.ctl("lun.delete", name="r1")
        del pats[0], pats[1]
        d.ctl("drive.fail", index=8)
        wait_for("the rebuild of drive 8", lambda: drive(d, 8)["rebuild_left"] == 0
                 and rebuilds(d)[-1]["state"] == "done", timeout=120)
        r = run(ctl + ["drive", "remove", "8"])    # a failed, rebuilt drive: let go at once
        assert "removed" in r.stdout, r.stdout
        for raid, p in pats.items():
            r = qemu_io(d.uri(f"r{raid}"), f"read -P {p:#x} 0 32M")
            assert r.returncode == 0 and "verification failed" not in r.stdout, (raid, r.stdout + r.stderr)
        healthy(d)
        assert d.stop() == 0
        check_parity(d)
        d.start()
        assert d.ctl("status")["state"] == "ok", d.ctl("status")
        for raid, p in pats.items():
            r = qemu_io(d.uri(f"r{raid}"), f"read -P {p:#x} 0 32M")
            assert r.returncode == 0 and "verification failed" not in r.stdout, (raid, r.stdout + r.stderr)
        healthy(d)
    finally:
        d.stop()


@pytest.mark.parametrize("point", ["drive_remove.after_quorum",
                                   "rebuild.after_switch:3", "rebuild.after_commit:1"])
def test_kill_9_during_a_removal_resumes_and_loses_nothing(tmp_path, point):
    """Drive 0 holds a metadata copy and data of a RAID0 and a RAID5 LUN; its removal
    is slowed (2 MiB/s) so that a periodic commit (every 5 s) comes before its end. The process
    kills itself at ``point``; the next start resumes the removal (or, killed right
    after the metadata moved, has not recorded it: it is asked again), the drive is
    let go, every byte reads back, and the pool starts without the drive's image."""
    need("qemu-io")
    d = Daemon(tmp_path / "state", drives=7, drive_size="256M", extra=["--task-rate-mib", "2"]).start()
    try:
        pats = {0: 0x30, 5: 0x35}
        write_luns(d, pats, 96 * MiB)
        assert drive(d, 0)["quorum"]
        assert d.stop() == 0
        d.env = {"VSAND_CRASHPOINT": point}
        d.start()
        try:
            d.ctl("drive.remove", index=0)
        except Exception:           # noqa: BLE001 (killed while answering)
            pass
        wait_for("the crash", lambda: not d.alive(), timeout=120)
        assert d.proc.returncode == -signal.SIGKILL, d.read_log()
        d.env = {}
        d.start()
        assert not drive(d, 0)["quorum"]           # the metadata copy moved before the kill
        if point == "drive_remove.after_quorum":
            assert drive(d, 0)["state"] == "ok"     # the removal itself was never recorded
            d.ctl("drive.remove", index=0)
        else:
            assert "resuming background task" in d.read_log(), d.read_log()
        for raid, p in pats.items():
            reads_back(d.uri(f"r{raid}"), f"read -P {p:#x} 0 96M")
        task = rebuilds(d)[-1]
        d.ctl("task.set", id=task["id"], rate=0)
        wait_for("drive 0 to be let go", lambda: drive(d, 0)["state"] == "removed", timeout=300)
        healthy(d)
        assert d.stop() == 0
        check_parity(d)
        os.unlink(os.path.join(d.state_dir, "drives", "drive-00.img"))
        d.start()
        assert d.ctl("status")["state"] == "ok", d.ctl("status")
        for raid, p in pats.items():
            reads_back(d.uri(f"r{raid}"), f"read -P {p:#x} 0 96M")
    finally:
        d.stop()
