"""`vsanctl pool scrub` against a real daemon (issue 12 item 5): bytes of a RAID5
member changed behind the daemon's back are found, the stripe's parity is made
whole again, the task says how many stripes it repaired, the log says which, and
`vsand check --parity` is clean afterwards."""

from __future__ import annotations

import os
import sys

from conftest import ROOT, Daemon, healthy, need, run
from flakydrive import MiB, qemu_io, wait_for

VSANCTL = [sys.executable, "-m", "vsand.cli.vsanctl"]
QUORUM = 64 * MiB       # the default units' metadata area at the start of each drive


def test_scrub_repairs_a_stripe_changed_behind_the_daemons_back(tmp_path):
    need("qemu-io")
    d = Daemon(tmp_path / "state", drives=6, drive_size="256M").start()
    try:
        ctl = VSANCTL + ["--control", d.control]
        d.ctl("lun.create", name="r5", size=32 * MiB, raid=5)
        r = qemu_io(d.uri("r5"), "write -P 0x42 0 32M", "flush")
        assert r.returncode == 0, r.stdout + r.stderr
        r = run(ctl + ["pool", "scrub"])
        assert "scrub started as task" in r.stdout and "32 stripe(s)" in r.stdout, r.stdout
        task = r.stdout.split("task ")[1].split(":")[0]
        run(ctl + ["task", "wait", task], timeout=120)
        t = d.ctl("task.show", id=int(task))
        assert t["state"] == "done" and t["phase"] == "0 repaired" and t["done"] == 32, t
        # a drive that holds no metadata: its first data extent past the metadata area
        # is a member PSEG of the LUN
        victim = next(x for x in d.ctl("drive.list") if not x["quorum"])
        fd = os.open(victim["path"], os.O_RDWR)
        try:
            at = os.lseek(fd, QUORUM, os.SEEK_DATA)
            os.pwrite(fd, b"\xa5" * 64, at + 4096)
        finally:
            os.close(fd)
        r = run(ctl + ["pool", "scrub"])
        task = r.stdout.split("task ")[1].split(":")[0]
        run(ctl + ["task", "wait", task], timeout=120)
        t = d.ctl("task.show", id=int(task))
        assert t["state"] == "done" and t["phase"] == "1 repaired", t
        assert "scrub: RAID5 RStore" in d.read_log() and "parity recomputed" in d.read_log()
        r = run(ctl + ["pool", "scrub", "--json"], check=False)
        assert r.returncode == 0, r
        healthy(d)
        assert d.stop() == 0
        r = run([sys.executable, "-m", "vsand", "check", "--parity", d.state_dir], check=False, cwd=ROOT)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        d.stop()


def test_periodic_scrub(tmp_path):
    """``--scrub-interval 2s``: a scrub starts two seconds after the start (none was
    recorded), and the next one two seconds after it ended, counted from the time
    the pool recorded, also across a restart."""
    need("qemu-io")
    d = Daemon(tmp_path / "state", drives=6, drive_size="256M", extra=["--scrub-interval", "2s"]).start()
    try:
        d.ctl("lun.create", name="r5", size=8 * MiB, raid=5)
        r = qemu_io(d.uri("r5"), "write -P 0x42 0 8M", "flush")
        assert r.returncode == 0, r.stdout + r.stderr

        def scrubs(state="done"):
            return [t for t in d.ctl("task.list") if t["kind"] == "scrub" and t["state"] == state]

        wait_for("the first periodic scrub", lambda: len(scrubs()) >= 1)
        wait_for("the second periodic scrub", lambda: len(scrubs()) >= 2)
        first, second = scrubs()[:2]
        assert second["started"] - first["finished"] >= 1.5, (first, second)
        assert "periodic scrub (every 2 s)" in d.read_log()
        assert d.stop() == 0
        d.start()
        wait_for("a scrub after the restart", lambda: len(scrubs()) >= 3)
        healthy(d)
    finally:
        d.stop()
