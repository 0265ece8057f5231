"""Pool integrity against a real daemon (issue 10, findings 3 and 4).

- Exclusive access: a second daemon on the same state directory, or on the same
  drives under another state directory, is refused naming the first one's pid and
  touches nothing of it (its sockets keep answering, NBD keeps serving); two daemons
  started at once on a fresh directory make one pool.
- `vsand check` refuses a pool a daemon has open (exit 2, naming the pid) and reads
  it with `--live`.
- Drive checks at start-up: a truncated, missing or foreign drive (another pool's
  image, or garbage over the label) is failed durably and the pool runs degraded
  with RAID1/RAID5 data intact; the failure survives restarts, also once the image
  comes back; `vsand check` says degraded (3) or, for a path that is no drive of
  the pool, reports it (1).
- A lost drive holding RAID0 data: start-up is refused with the reason, a reconnected
  drive starts normally, and `--accept-data-loss` serves the pool with exactly the
  lost segments failing.

Data is compared by sha256 of what nbdcopy reads, against reference images written
with nbdcopy --flush.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time

import pytest

from daemonkit import ROOT, SYS_PY, VSAND, Daemon, free_port, healthy, need, run

MiB = 1 << 20
DRIVES, DRIVE_SIZE = 8, "256M"
LUN_SIZE = 64 * MiB
DATA = 40 * MiB                       # random bytes at the start of a LUN, zeros after
QUORUM = 3                            # the first three drives carry the metadata
VSANCTL = [sys.executable, "-m", "vsand.cli.vsanctl"]


# ---- helpers ------------------------------------------------------------------------------
def new_daemon(state, **kw) -> Daemon:
    return Daemon(state, drives=DRIVES, drive_size=DRIVE_SIZE, **kw)


def log_mark(d: Daemon) -> int:
    try:
        return os.path.getsize(d.log)
    except OSError:
        return 0


def log_since(d: Daemon, mark: int) -> str:
    with open(d.log, "rb") as f:
        f.seek(mark)
        return f.read().decode(errors="replace")


def vsanctl_json(d: Daemon, *args):
    r = run(VSANCTL + ["--control", d.control, "--json", *args], timeout=60)
    return json.loads(r.stdout)


def ref_image(tmp_path, seed: int) -> tuple[str, str]:
    """A LUN-sized image: DATA random bytes, then zeros. Returns (path, sha256)."""
    data = random.Random(seed).randbytes(DATA) + bytes(LUN_SIZE - DATA)
    path = str(tmp_path / f"ref-{seed}.img")
    with open(path, "wb") as f:
        f.write(data)
    return path, hashlib.sha256(data).hexdigest()


def put(d: Daemon, lun: str, ref: tuple[str, str]) -> None:
    run(["nbdcopy", "--flush", ref[0], d.uri(lun)], timeout=120)


def digest(d: Daemon, lun: str) -> str:
    r = subprocess.run(["nbdcopy", d.uri(lun), "-"], capture_output=True, timeout=120)
    assert r.returncode == 0, f"nbdcopy from {lun} -> {r.returncode}: {r.stderr.decode()[-2000:]}"
    assert len(r.stdout) == LUN_SIZE
    return hashlib.sha256(r.stdout).hexdigest()


def vsand_check(state, *extra) -> subprocess.CompletedProcess:
    r = run(VSAND + ["check", str(state), *extra], check=False, cwd=ROOT, timeout=120)
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r


def used_psegs(drive: dict) -> int:
    return drive["psegs"] - drive["free_psegs"]


def copy_sparse(src: str, dst: str) -> None:
    run(["cp", "--sparse=always", src, dst])


SEGMENT_READER = r"""
import hashlib, sys
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
seg = int(sys.argv[2])
for off in range(0, h.get_size(), seg):
    try:
        print(hashlib.sha256(h.pread(seg, off)).hexdigest())
    except nbd.Error as e:
        print("error", e.errno)
h.shutdown()
"""


def segment_reads(d: Daemon, lun: str) -> list[str]:
    """sha256 of every 1 MiB segment of ``lun`` read separately, or 'error ERRNO'."""
    if not os.path.exists(SYS_PY):
        pytest.skip("libnbd's Python binding needs /usr/bin/python3")
    r = run([SYS_PY, "-c", SEGMENT_READER, d.uri(lun), str(MiB)], check=False, timeout=120)
    if "No module named 'nbd'" in r.stderr:
        pytest.skip("python3-libnbd is not installed")
    assert r.returncode == 0, r.stderr
    return r.stdout.split("\n")[:-1]


def ref_segments(ref: tuple[str, str]) -> list[str]:
    with open(ref[0], "rb") as f:
        data = f.read()
    return [hashlib.sha256(data[o:o + MiB]).hexdigest() for o in range(0, len(data), MiB)]


def second_daemon(state, *extra) -> list[str]:
    return VSAND + ["--state-dir", str(state), "--drives", str(DRIVES), "--drive-size", DRIVE_SIZE,
                    "--listen", f"127.0.0.1:{free_port()}", *extra]


def refused(args, timeout: float = 60) -> str:
    """Runs a vsand that must refuse to start: exit status 1, its output returned."""
    r = run(args, check=False, cwd=ROOT, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 1, f"want exit 1, got {r.returncode}:\n{out}"
    assert "Traceback" not in out, out
    return out


def assert_failed_drive(d: Daemon, victim: int, path: str, log: str) -> None:
    """The daemon runs degraded with drive ``victim`` failed, as the log, `drive list`
    and `status` say."""
    line = next((ln for ln in log.splitlines() if f"drive {victim} ({path}) is failed: " in ln), None)
    assert line is not None, log
    assert "WARNING" in line and "the pool runs degraded" in line, line
    drives = vsanctl_json(d, "drive", "list")
    assert len(drives) == DRIVES
    for dr in drives:
        if dr["index"] == victim:
            assert dr["failed"] is True and dr["state"].startswith("failed: "), dr
        else:
            assert dr["failed"] is False and dr["state"] == "ok", dr
    st = vsanctl_json(d, "status")
    assert st["failed_drives"] == 1 and st["state"] == "degraded", st
    table = run(VSANCTL + ["--control", d.control, "drive", "list"]).stdout
    assert "FAILED" in table, table


def assert_check(state, want: int, stranger: str | None = None) -> None:
    r = vsand_check(state)
    out = r.stdout
    assert r.returncode == want, f"vsand check -> {r.returncode}, want {want}:\n{out}{r.stderr}"
    lines = out.splitlines()
    if want == 3:
        assert any(ln.startswith("degraded: ") for ln in lines), out
        assert all(ln.startswith(("degraded: ", "note: ")) for ln in lines), out
        assert "clean" not in out
    if stranger:
        assert any(ln.startswith("not a drive of this pool: ") and stranger in ln for ln in lines), out


def still_serving(d, inodes: dict, ref: tuple, tmp_path, seed: int) -> tuple:
    """The first daemon is untouched by a refused second one: the same socket files,
    its control socket answers, NBD serves the flushed data (``ref``) and takes a new
    image, which is returned."""
    for p, ino in inodes.items():
        assert os.stat(p).st_ino == ino, f"{p} was replaced"
    assert d.alive(), d.read_log()
    assert d.ctl("status")["pid"] == d.proc.pid
    assert digest(d, "keep") == ref[1]
    new = ref_image(tmp_path, seed)
    put(d, "keep", new)
    assert digest(d, "keep") == new[1]
    healthy(d)
    return new


# ---- 1. exclusive access ------------------------------------------------------------------
def test_second_daemon_on_the_same_state_dir_is_refused(tmp_path):
    need("nbdcopy")
    state = tmp_path / "state"
    d = new_daemon(state).start()
    try:
        d.ctl("lun.create", name="keep", size=LUN_SIZE, raid=5)
        ref1 = ref_image(tmp_path, 1)
        put(d, "keep", ref1)
        with open(state / "vsand.lock") as f:
            assert f.read().strip() == str(d.proc.pid)
        inodes = {p: os.stat(p).st_ino for p in (d.sock, d.control)}

        out = refused(second_daemon(state))
        assert "cannot start: state directory" in out and str(state) in out, out
        assert f"is in use by pid {d.proc.pid} (" in out, out

        with open(state / "vsand.lock") as f:
            assert f.read().strip() == str(d.proc.pid)
        ref2 = still_serving(d, inodes, ref1, tmp_path, 2)
    finally:
        assert d.stop() == 0, d.read_log()
    # once the first one is gone, the next starts normally and has every flushed byte
    d2 = new_daemon(state).start()
    try:
        assert digest(d2, "keep") == ref2[1]
        healthy(d2)
    finally:
        assert d2.stop() == 0, d2.read_log()
    assert vsand_check(state).returncode == 0


def test_second_daemon_on_the_same_drives_is_refused(tmp_path):
    need("nbdcopy")
    state = tmp_path / "state"
    d = new_daemon(state).start()
    try:
        d.ctl("lun.create", name="keep", size=LUN_SIZE, raid=1)
        ref1 = ref_image(tmp_path, 3)
        put(d, "keep", ref1)
        paths = [dr["path"] for dr in vsanctl_json(d, "drive", "list")]
        assert len(paths) == DRIVES
        inodes = {p: os.stat(p).st_ino for p in (d.sock, d.control)}

        other = tmp_path / "other"
        drive_args = [a for p in paths for a in ("--drive", p)]
        args = VSAND + ["--state-dir", str(other), "--listen", f"127.0.0.1:{free_port()}", *drive_args]
        out = refused(args)
        m = re.search(r"drive (\S+) is in use by pid (\d+)", out)
        assert m, out
        assert m.group(1) in paths and int(m.group(2)) == d.proc.pid, out

        ref2 = still_serving(d, inodes, ref1, tmp_path, 4)
    finally:
        assert d.stop() == 0, d.read_log()

    # the same drives under the other state directory, now that they are free
    o = Daemon(other, extra=drive_args)
    o.start()
    try:
        assert digest(o, "keep") == ref2[1]
        assert vsanctl_json(o, "status")["failed_drives"] == 0
        healthy(o)
    finally:
        assert o.stop() == 0, o.read_log()
    d2 = new_daemon(state).start()
    try:
        assert digest(d2, "keep") == ref2[1]
    finally:
        assert d2.stop() == 0, d2.read_log()
    assert vsand_check(state).returncode == 0


def test_two_daemons_started_at_once_make_one_pool(tmp_path):
    state = tmp_path / "state"
    os.makedirs(state)
    logs = [open(tmp_path / f"d{i}.log", "wb") for i in range(2)]
    winner = None
    procs = [subprocess.Popen(second_daemon(state), stdout=logs[i], stderr=subprocess.STDOUT, cwd=ROOT,
                              env=dict(os.environ, PYTHONUNBUFFERED="1")) for i in range(2)]
    try:
        deadline = time.monotonic() + 60
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        losers = [p for p in procs if p.poll() is not None]
        assert len(losers) == 1, "want exactly one daemon to exit"
        loser = losers[0]
        winner = procs[1 - procs.index(loser)]
        out = open(tmp_path / f"d{procs.index(loser)}.log").read()
        assert loser.returncode == 1 and f"is in use by pid {winner.pid} (" in out, out
        assert "Traceback" not in out, out
        control = str(state / "control.sock")
        from vsand.control.client import ControlError, call
        while time.monotonic() < deadline:
            assert winner.poll() is None, open(tmp_path / f"d{procs.index(winner)}.log").read()
            try:
                st = call(control, "status")
                break
            except ControlError:
                time.sleep(0.05)
        else:
            raise AssertionError("the remaining daemon did not start")
        assert st["pid"] == winner.pid and st["drives"] == DRIVES and st["state"] == "ok"
        call(control, "lun.create", name="one", size=LUN_SIZE, raid=5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(30)
        for f in logs:
            f.close()
    assert winner is not None and winner.returncode == 0
    assert len(os.listdir(state / "drives")) == DRIVES
    r = vsand_check(state)
    assert r.returncode == 0 and f"clean: {DRIVES} drives" in r.stdout, r.stdout


# ---- 2. the checker and a live pool ---------------------------------------------------------
def test_check_refuses_a_live_pool_and_reads_it_with_live(tmp_path):
    need("nbdcopy")
    state = tmp_path / "state"
    d = new_daemon(state).start()
    try:
        d.ctl("lun.create", name="r5", size=LUN_SIZE, raid=5)
        d.ctl("lun.create", name="r1", size=LUN_SIZE, raid=1)
        ref = ref_image(tmp_path, 5)
        put(d, "r5", ref)
        put(d, "r1", ref)

        r = vsand_check(state)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "the pool is in use" in r.stderr and f"is in use by pid {d.proc.pid}" in r.stderr, r.stderr
        assert "--live" in r.stderr, r.stderr
        assert "clean" not in r.stdout, r.stdout

        r = vsand_check(state, "--live")
        assert r.returncode == 0 and f"clean: {DRIVES} drives" in r.stdout, r.stdout + r.stderr
        r = vsand_check(state, "--live", "--parity")
        assert r.returncode == 0 and f"clean: {DRIVES} drives" in r.stdout, r.stdout + r.stderr

        # neither check disturbed the daemon
        assert d.alive() and d.ctl("status")["state"] == "ok"
        assert digest(d, "r5") == ref[1] and digest(d, "r1") == ref[1]
        healthy(d)
    finally:
        assert d.stop() == 0, d.read_log()
    r = vsand_check(state, "--parity")
    assert r.returncode == 0 and f"clean: {DRIVES} drives" in r.stdout, r.stdout + r.stderr


# ---- 3. truncated, missing and foreign drives ----------------------------------------------
# (kind, drive index, `vsand check` exit while the damaged image is in place)
DAMAGE = [
    ("truncated", 5, 3),
    ("missing", 1, 3),         # a quorum drive
    ("foreign", 6, 1),         # another pool's image: "not a drive of this pool"
    ("garbage", 2, 1),         # a quorum drive whose label area is overwritten
]


def damage(kind: str, path: str, tmp_path) -> None:
    if kind == "truncated":
        os.truncate(path, 65 * MiB)
    elif kind == "missing":
        os.unlink(path)
    elif kind == "foreign":
        other = new_daemon(tmp_path / "other").start()
        assert other.stop() == 0
        copy_sparse(str(tmp_path / "other" / "drives" / os.path.basename(path)), path)
    elif kind == "garbage":
        with open(path, "r+b") as f:
            f.write(random.Random(99).randbytes(4096))
    else:
        raise ValueError(kind)


@pytest.mark.parametrize("kind,victim,check_rc", DAMAGE, ids=[k for k, _, _ in DAMAGE])
def test_damaged_drive_is_failed_and_the_pool_runs_degraded(tmp_path, kind, victim, check_rc):
    need("nbdcopy")
    state = tmp_path / "state"
    d = new_daemon(state).start()
    try:
        d.ctl("lun.create", name="r5", size=LUN_SIZE, raid=5)
        d.ctl("lun.create", name="r1", size=LUN_SIZE, raid=1)
        refs = {"r5": ref_image(tmp_path, 50), "r1": ref_image(tmp_path, 10)}
        for lun, ref in refs.items():
            put(d, lun, ref)
        drives = vsanctl_json(d, "drive", "list")
        path = drives[victim]["path"]
        if victim >= QUORUM:         # (quorum drives keep PSEGs in reserve: not "used")
            assert used_psegs(drives[victim]) > 0, drives[victim]
    finally:
        assert d.stop() == 0, d.read_log()
    saved = str(tmp_path / "saved.img")
    copy_sparse(path, saved)
    damage(kind, path, tmp_path)

    # degraded start: the drive is failed, the data reads back (reconstructed)
    mark = log_mark(d)
    d.start()
    try:
        assert_failed_drive(d, victim, path, log_since(d, mark))
        for lun, ref in refs.items():
            assert digest(d, lun) == ref[1], f"{lun} differs after losing drive {victim} ({kind})"
        # degraded writes, so that the old image, should it come back, is stale
        refs = {"r5": ref_image(tmp_path, 55), "r1": ref_image(tmp_path, 11)}
        for lun, ref in refs.items():
            put(d, lun, ref)
            assert digest(d, lun) == ref[1]
        healthy(d)
    finally:
        assert d.stop() == 0, d.read_log()
    assert_check(state, check_rc, stranger=path if check_rc == 1 else None)

    # the failure is durable: a restart with the image still damaged ...
    mark = log_mark(d)
    d.start()
    try:
        assert_failed_drive(d, victim, path, log_since(d, mark))
        for lun, ref in refs.items():
            assert digest(d, lun) == ref[1]
    finally:
        assert d.stop() == 0, d.read_log()

    # ... and once the original image is back
    if os.path.exists(path):
        os.unlink(path)
    copy_sparse(saved, path)
    mark = log_mark(d)
    d.start()
    try:
        assert_failed_drive(d, victim, path, log_since(d, mark))
        for lun, ref in refs.items():
            assert digest(d, lun) == ref[1], f"{lun}: the stale image of drive {victim} was trusted"
        healthy(d)
    finally:
        assert d.stop() == 0, d.read_log()
    assert_check(state, 3)


# ---- 4. a lost drive that held RAID0 data -------------------------------------------------
def test_lost_raid0_data_refuses_start_unless_accepted(tmp_path):
    need("nbdcopy", "qemu-io")
    state = tmp_path / "state"
    d = new_daemon(state).start()
    try:
        d.ctl("lun.create", name="r0", size=LUN_SIZE, raid=0)
        d.ctl("lun.create", name="r5", size=LUN_SIZE, raid=5)
        ref0, ref5 = ref_image(tmp_path, 0), ref_image(tmp_path, 5)
        put(d, "r0", ref0)
        before = vsanctl_json(d, "drive", "list")
        victim = next(dr["index"] for dr in before if dr["index"] >= QUORUM and used_psegs(dr) > 0)
        path = before[victim]["path"]
        put(d, "r5", ref5)
        after = vsanctl_json(d, "drive", "list")
        assert used_psegs(after[victim]) > used_psegs(before[victim]), "no RAID5 data on the victim"
    finally:
        assert d.stop() == 0, d.read_log()
    saved = str(tmp_path / "saved.img")
    os.rename(path, saved)

    # refused, with the reason
    out = refused(d.args)
    assert f"cannot start: drive {victim} is " in out, out
    m = re.search(r"no redundancy covers what it holds for r0 \((\d+) MiB\)", out)
    assert m, out
    lost = int(m.group(1))
    assert 0 < lost <= DATA // MiB, out
    assert "r5 (" not in out, out
    assert "Reconnect the drive, or start with --accept-data-loss" in out, out
    assert not os.path.exists(path)

    # the refused start changed nothing: with the drive reconnected the pool is whole
    os.rename(saved, path)
    d.start()
    try:
        st = vsanctl_json(d, "status")
        assert st["failed_drives"] == 0 and st["state"] == "ok", st
        assert digest(d, "r0") == ref0[1] and digest(d, "r5") == ref5[1]
    finally:
        assert d.stop() == 0, d.read_log()
    os.unlink(path)

    # --accept-data-loss: served degraded; exactly the lost segments fail, with EIO
    acc = Daemon(state, drives=DRIVES, drive_size=DRIVE_SIZE, extra=["--accept-data-loss"])
    mark = log_mark(acc)
    acc.start()
    try:
        assert_failed_drive(acc, victim, path, log_since(acc, mark))
        assert digest(acc, "r5") == ref5[1]
        got, want = segment_reads(acc, "r0"), ref_segments(ref0)
        assert len(got) == len(want) == LUN_SIZE // MiB
        bad = [i for i, g in enumerate(got) if g.startswith("error")]
        assert len(bad) == lost, f"{len(bad)} segments fail, the refusal said {lost} MiB: {bad}"
        assert all(got[i] == f"error {errno.errorcode[errno.EIO]}" for i in bad), [got[i] for i in bad]
        assert all(got[i] == want[i] for i in range(len(got)) if i not in bad)
        r = run(["nbdcopy", acc.uri("r0"), "null:"], check=False, timeout=120)
        assert r.returncode != 0, "reading all of r0 succeeded"
        r = run(["qemu-io", "-f", "raw", "-c", f"read 0 {DATA}", acc.uri("r0")], check=False)
        assert r.returncode != 0 and "Input/output error" in r.stdout + r.stderr, r.stdout + r.stderr
        healthy(acc)
    finally:
        assert acc.stop() == 0, acc.read_log()

    # the loss was accepted once: later starts need no flag and keep the drive failed
    mark = log_mark(d)
    d.start()
    try:
        assert_failed_drive(d, victim, path, log_since(d, mark))
        assert digest(d, "r5") == ref5[1]
        assert sum(g.startswith("error") for g in segment_reads(d, "r0")) == lost
    finally:
        assert d.stop() == 0, d.read_log()
    r = vsand_check(state)
    assert r.returncode == 1 and "r0" in r.stdout, r.stdout + r.stderr
    # the refusal is one "cannot start: ..." line (checked last: cosmetic)
    assert "cannot start: cannot start" not in out, out
