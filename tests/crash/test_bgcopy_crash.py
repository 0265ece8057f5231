"""kill -9 of the REAL daemon while a snapclone is being copied (BGCOPY, DESIGN.md §8-§9).

Every case builds the chain ``s0 <- clone <- src`` on a RAID0 or RAID5 LUN in one of
the two ``snapclone_mode`` settings:

1. ``src`` (64 MiB, random data with unallocated holes) is written, snapshotted as
   ``s0``, then changed ("mid" writes: ``s0`` now owns some segments and reads the
   rest through ``src``). What ``src`` reads now is what the clone must read forever.
2. ``src`` is read whole (nbdcopy) and its sha256 written to a file; then ``snapclone
   create src clone`` and at once "new" writes to ``src`` (unaligned partial writes to
   shared segments, whole segments, a hole, a segment boundary, whole and partial
   trims) and a FLUSH while the copy runs (``--task-rate-mib 32``: about 1.5 s; where
   the crash must come after the writes the task is held at 1 MiB/s until they
   returned). A client sends FLUSH every 0.1 s meanwhile, so the copy's progress
   becomes durable as it goes.
3. The daemon dies by SIGKILL: ``kill -9`` from here when the copy has done 30-60 %
   (task.show), or a crash point armed with ``VSAND_CRASHPOINT`` on a daemon
   restarted just before step 2: after a segment was copied into the clone (before
   its map change is committed), as the clone leaves the tree (before that is
   durable), in a copy-on-write of a ``src`` write, in a commit between the data sync
   and the log append. Two more cases start ``src``'s writes only once BGCOPY has
   copied segment 0 (with and without a commit after it, no flusher) and die at the
   second write: they hit, deterministically, the engine bug below.

Checks: on the dead pool (opened read-only, nothing written) the task record is still
``running``, the clone still ``copying``, and the clone, ``s0`` and ``src`` already
read right (the durability contract); ``vsand check --parity`` finds nothing. After a
plain restart on the same state directory the task goes on by itself to ``done``
(only task.show is sent), the clone is ``independent`` and reads exactly like ``src``
at its creation (sha256), ``s0`` like ``src`` at its own creation, ``src`` its new
writes (either value per 4 KiB block when the crash cut them short; then exactly,
once they are written again); ``tree`` shows ``s0 <- src`` and the clone alone; and
``vsand check --parity`` is clean on the stopped pool.

``test_kill_with_running_and_queued_copies``: three clones of one LUN (two copying, one
queued) and a snapshot of the first; kill -9; all three tasks resume and finish.

Two engine bugs these tests found (fixed) are reduced to the engine (no daemon, no
timing) at the end, as regression tests:

* ``test_src_write_over_a_seed_then_crash``: an unflushed write to ``src`` over a
  segment BGCOPY has copied changes the clone or ``s0`` after a crash;
* ``test_two_clones_copying_the_same_segments_at_once``: a discarded copy is counted
  as done and the clone fails to leave its tree ("detach with shared segments").
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
from daemonkit import ROOT, Daemon, need

from vsand.disk import snapclone
from vsand.disk.role import Role
from vsand.disk.check import check_paths
from vsand.disk.pool import Pool
from vsand.mapping.lmap import ALLOCATED, SP, SS
from vsand.units import Units

MiB = 1 << 20
BLOCK = 4096
SIZE = 64 * MiB
RATE = 32                 # MiB/s: the ~40 MiB copy takes about 1.5 s


# ---- what the LUNs hold --------------------------------------------------------------------
def base_image(seed: int) -> np.ndarray:
    """Random bytes in [0, 44) and [52, 54) MiB, zeros (never written) elsewhere, with a
    hole at [12, 16) MiB."""
    img = np.random.default_rng(seed).integers(0, 256, SIZE, dtype=np.uint8)
    img[12 * MiB:16 * MiB] = 0
    img[44 * MiB:52 * MiB] = 0
    img[54 * MiB:] = 0
    return img


# (kind, offset, length); "w" writes random bytes, "t" trims (reads as zeros after)
MID = [("w", 3 * MiB + 1000, 5000), ("w", 5 * MiB, MiB), ("w", 14 * MiB + 4096, 8192),
       ("w", 20 * MiB + MiB // 2, MiB)]
NEW = ([("w", k * MiB + 4096 * (k % 7) + 333, 3000 + 17 * k) for k in range(0, 44, 3) if k not in (3, 9)]
       + [("w", 3 * MiB + 600_000, 1000),            # a segment s0 already owns
          ("w", 8 * MiB, 2 * MiB),                    # two whole segments
          ("w", 46 * MiB + 12345, 100),               # never allocated
          ("w", 39 * MiB - 300, 1000),                # across a segment boundary
          ("w", 52 * MiB + 200_000, 70_000),
          ("t", 25 * MiB, MiB),                       # a whole shared segment
          ("t", 26 * MiB + 8192, 16384)])             # a partial one: zeros written


def _disjoint(ops) -> bool:
    seen: set[int] = set()
    for _, off, n in ops:
        b = set(range(off // BLOCK, -(-(off + n) // BLOCK)))
        if b & seen:
            return False
        seen |= b
    return True


assert _disjoint(NEW), "two NEW writes share a 4 KiB block: the per-block check needs them apart"


class Plan:
    """The images every LD must read and the qemu-io commands that make them."""

    def __init__(self, tmp, seed: int):
        self.tmp = str(tmp)
        self.seed = seed
        self.base = base_image(seed)
        self.created, self.mid_cmds = self._apply(self.base, MID, "mid")
        self.new, self.new_cmds = self._apply(self.created, NEW, "new")

    def _apply(self, img: np.ndarray, ops, tag: str) -> tuple[np.ndarray, list[str]]:
        out = img.copy()
        cmds = []
        rng = np.random.default_rng(self.seed * 1000 + len(tag))
        for i, (kind, off, n) in enumerate(ops):
            if kind == "t":
                out[off:off + n] = 0
                cmds.append(f"discard {off} {n}")
                continue
            data = rng.integers(0, 256, n, dtype=np.uint8)
            out[off:off + n] = data
            path = os.path.join(self.tmp, f"{tag}{i}.bin")
            data.tofile(path)
            cmds.append(f"write -s {path} {off} {n}")
        return out, cmds + ["flush"]


# ---- clients --------------------------------------------------------------------------------
def sha(arr: np.ndarray) -> str:
    return hashlib.sha256(memoryview(arr)).hexdigest()


def read_lun(d: Daemon, name: str) -> np.ndarray:
    r = subprocess.run(["nbdcopy", "--no-extents", d.uri(name), "-"], capture_output=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert len(r.stdout) == SIZE, len(r.stdout)
    return np.frombuffer(r.stdout, dtype=np.uint8)


def qemu_io(d: Daemon, name: str, cmds: list[str], check: bool = True) -> subprocess.CompletedProcess:
    args = ["qemu-io", "-t", "writeback", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    r = subprocess.run(args + [d.uri(name)], capture_output=True, text=True, timeout=60, check=False)
    if check:
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "failed" not in out.lower(), out[-3000:]
    return r


class Flusher(threading.Thread):
    """An NBD client that sends FLUSH every 0.1 s until the daemon is gone: each one
    commits the copy's progress, so a crash finds part of it durable."""

    def __init__(self, d: Daemon, name: str):
        super().__init__(daemon=True)
        self.uri, self.halt, self.count = d.uri(name), threading.Event(), 0

    def run(self) -> None:
        while not self.halt.is_set():
            r = subprocess.run(["qemu-io", "-f", "raw", "-c", "flush", self.uri], capture_output=True,
                               timeout=60, check=False)
            if r.returncode:
                return
            self.count += 1
            self.halt.wait(0.1)

    def stop(self) -> None:
        self.halt.set()
        self.join(60)


class WrongBytes(AssertionError):
    """An LD reads bytes it must not."""


class DetachBug(AssertionError):
    """A clone tried to leave its tree while it still shared segments."""


def detach_bug(t: dict, log: str = "") -> None:
    if t["state"] == "failed" and "detach with shared segments" in t["error"]:
        raise DetachBug(f"task {t['id']} ({t['target']}) failed: {t['error']}\n{log[-3000:]}")


def same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    if sha(got) != sha(want):
        bad = np.flatnonzero(got != want)
        raise WrongBytes(f"{what}: {len(bad)} bytes differ, first at {int(bad[0])} "
                             f"(segment {int(bad[0]) // MiB}), last at {int(bad[-1])}")


def old_or_new(got: np.ndarray, old: np.ndarray, new: np.ndarray, what: str) -> None:
    g, o, n = (a.reshape(-1, BLOCK) for a in (got, old, new))
    ok = np.all(g == o, axis=1) | np.all(g == n, axis=1)
    bad = np.flatnonzero(~ok)
    assert not len(bad), f"{what}: blocks {bad[:8].tolist()} (of {len(bad)}) hold neither the old nor the new bytes"


def drive_paths(d: Daemon) -> list[str]:
    drives = os.path.join(d.state_dir, "drives")
    return sorted(os.path.join(drives, f) for f in os.listdir(drives) if f.endswith(".img"))


def vsand_check(d: Daemon) -> None:
    r = subprocess.run([sys.executable, "-m", "vsand", "check", "--parity", d.state_dir],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert r.returncode == 0 and r.stdout.startswith("clean"), r.stdout + r.stderr


def names(d: Daemon, ld: str) -> list[str]:
    return [r["name"] for r in d.ctl("tree", name=ld)]


def copied_durably(clone, src) -> int:
    """Segments BGCOPY copied into the clone (its own, with src's Sp kept over them)."""
    return sum(1 for k in range(clone.l2.nsegs)
               if clone.l2.get(k) & ALLOCATED and not clone.l2.get(k) & SS and src.l2.get(k) & SP)


# ---- one case --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    raid: int
    mode: str                      # snapclone_mode
    crash: str                     # "kill9" or a crash point name:n
    writes_done: bool | None       # src's writes and FLUSH returned before the crash (None: either)
    phase: str | None = None       # the dead pool: "copy" = part of the copy is durable, "leave" =
    #                                everything copied durably, only leaving the tree is not
    seeded: str | None = None      # src's writes start once BGCOPY copied segment 0 (a seed),
    #                                "committed" after a FLUSH, "uncommitted" without; no flusher

    def __str__(self) -> str:
        return f"raid{self.raid}-{self.mode}-{self.crash}" + (f"-seed-{self.seeded}" if self.seeded else "")


def _case(tmp_path, case: Case) -> None:
    need("nbdcopy", "qemu-io")
    plan = Plan(tmp_path, seed=case.raid * 100 + len(str(case)))
    d = Daemon(tmp_path / "state", drive_size="512M",
               extra=["--task-rate-mib", str(RATE), "--latency-guard", "off"])
    d.start()
    flusher = Flusher(d, "s0")
    try:
        _run(d, plan, flusher, case)
    finally:
        if d.alive():
            d.stop()
        if flusher.is_alive():
            flusher.stop()


def _run(d: Daemon, plan: Plan, flusher: Flusher, case: Case) -> None:
    crash, writes_done, phase = case.crash, case.writes_done, case.phase
    # 1. src, s0, and src changed after s0
    d.ctl("pool.set", key="snapclone_mode", value=case.mode)
    d.ctl("lun.create", name="src", size=SIZE, raid=case.raid)
    base_file = os.path.join(plan.tmp, "base.img")
    plan.base.tofile(base_file)
    r = subprocess.run(["nbdcopy", f"--request-size={MiB}", base_file, d.uri("src")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    d.ctl("snapshot.create", source="src", name="s0")
    qemu_io(d, "src", plan.mid_cmds)
    # src as the clone will see it: its sha256 in a file (and the model agrees)
    h_created = sha(read_lun(d, "src"))
    with open(os.path.join(plan.tmp, "src-at-clone.sha256"), "w") as f:
        f.write(h_created + "\n")
    assert h_created == sha(plan.created), "src does not read what the set-up wrote"

    if crash != "kill9":        # the crash point counts from here: a restarted daemon
        assert d.stop() == 0
        d.env = {"VSAND_CRASHPOINT": crash}
        d.start()

    # 2. the clone, then new writes to src while its copy runs. Where the crash must
    # come after the writes, the task is held at 1 MiB/s until they are done.
    hold = crash == "kill9" or writes_done is True
    info = d.ctl("snapclone.create", source="src", name="clone", **({"rate": 1} if hold else {}))
    tid = info["task"]
    assert info["clone"] == "copying" and info["successor"] == "src" and info["predecessor"] == "s0"
    assert names(d, "src") == ["s0", "clone", "src"]
    if case.seeded:
        deadline = time.monotonic() + 10
        while d.ctl("task.show", id=tid)["bytes"] < MiB:       # segment 0 is in the clone
            assert time.monotonic() < deadline
            time.sleep(0.005)
        if case.seeded == "committed":
            qemu_io(d, "s0", ["flush"])
    else:
        flusher.start()
    w = qemu_io(d, "src", plan.new_cmds, check=crash == "kill9")
    new_flushed = w.returncode == 0
    if writes_done is not None:
        assert new_flushed == writes_done, f"{crash} fired {'after' if new_flushed else 'during'} " \
                                           f"the writes to src, want {'after' if writes_done else 'during'}"
    try:
        t = d.ctl("task.show", id=tid) if new_flushed else None
    except OSError:              # the crash point fired just now (a commit after the writes)
        assert writes_done is None
        t = None
    if t is not None:
        assert t["state"] == "running" and t["remaining"] > 0, t    # the writes overlapped the copy
        if hold:
            d.ctl("task.set", id=tid, rate=0)                         # on at --task-rate-mib

    # 3. the kill
    if crash == "kill9":
        deadline = time.monotonic() + 30
        while True:
            t = d.ctl("task.show", id=tid)
            assert t["state"] == "running", t
            part = t["bytes"] / (t["bytes"] + t["remaining"] * MiB)
            if part >= 0.3:
                break
            assert time.monotonic() < deadline, t
            time.sleep(0.01)
        # On a busy machine no flusher round may have ended since the copy progressed:
        # the copy is held at 1 MiB/s while two more FLUSHes commit what it applied.
        d.ctl("task.set", id=tid, rate=1)
        seen = flusher.count
        while flusher.count < seen + 2:
            assert flusher.is_alive() and time.monotonic() < deadline + 30, flusher.count
            time.sleep(0.01)
        d.proc.send_signal(signal.SIGKILL)
        assert part <= 0.6, t
    try:
        rc = d.proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"crash point {crash} was not reached:\n{d.read_log()}") from None
    assert rc == -signal.SIGKILL, (rc, d.read_log())
    if flusher.is_alive():
        flusher.stop()

    # the dead pool, as recovery will see it (read-only: nothing is written)
    paths = drive_paths(d)
    p = Pool.open(paths, readonly=True)
    try:
        rec = dict(p.tasks[tid])
        clone = p.get("clone")
        clone_role = clone.role.value
        left, pred_left = snapclone.shared_left(clone), snapclone.pred_left(clone)
        durable = copied_durably(clone, p.get("src"))
        dead = {name: np.frombuffer(bytes(p.get(name).read(0, SIZE)), dtype=np.uint8)
                for name in ("clone", "s0", "src")}
    finally:
        p.close()
    assert rec["state"] == "running" and rec["target"] == "clone", rec
    assert clone_role == "copying-clone", clone_role
    if phase == "copy":       # part of the copy is durable, part is not
        assert left > 0 and durable > 0, (left, durable, flusher.count)
    elif phase == "leave":    # all copied, durably; only leaving the tree is not
        assert left == 0 and pred_left == 0, (left, pred_left)
    same(dead["clone"], plan.created, "clone on the crashed pool vs src at the clone's creation")
    same(dead["s0"], plan.base, "s0 on the crashed pool vs src at s0's creation")
    if new_flushed:
        same(dead["src"], plan.new, "src on the crashed pool vs its flushed writes")
    else:
        old_or_new(dead["src"], plan.created, plan.new, "src on the crashed pool")
    assert check_paths(paths, parity=True) == []

    # 4. restart: the copy goes on by itself
    d.env = {}
    d.start()
    assert f"resuming background task(s) {tid}" in d.read_log()
    states = []
    deadline = time.monotonic() + 30
    while True:
        t = d.ctl("task.show", id=tid)
        states.append(t["state"])
        if t["state"] not in ("queued", "running"):
            break
        assert time.monotonic() < deadline, t
        time.sleep(0.02)
    assert t["state"] == "done" and t["error"] == "" and t["remaining"] == 0, (t, states)
    if phase != "leave":           # copying was left to do: it was seen going on
        assert states[0] in ("queued", "running"), states
    info = d.ctl("lun.show", name="clone")
    assert info["clone"] == "independent", info
    assert names(d, "src") == ["s0", "src"] and names(d, "clone") == ["clone"]

    # 5. every byte; then src is written again (the clone must not see it, s0 must keep
    # its bytes through the copies on first write of the recovered chain)
    with open(os.path.join(plan.tmp, "src-at-clone.sha256")) as f:
        h_created = f.read().strip()
    clone_now = read_lun(d, "clone")
    if sha(clone_now) != h_created:
        same(clone_now, plan.created, "clone vs src at the clone's creation")
    same(read_lun(d, "s0"), plan.base, "s0 vs src at s0's creation, after the clone left")
    qemu_io(d, "src", (plan.new_cmds[:-1] if not new_flushed else [])
            + ["write -P 0x5c 0 2M", f"write -P 0x5d {30 * MiB + 4096} 8192", "flush"])
    want_src = plan.new.copy()
    want_src[:2 * MiB] = 0x5C
    want_src[30 * MiB + 4096:30 * MiB + 12288] = 0x5D
    same(read_lun(d, "src"), want_src, "src vs its writes")
    same(read_lun(d, "s0"), plan.base, "s0 after more writes to src")
    assert "Traceback" not in d.read_log(), d.read_log()
    assert d.stop() == 0, d.read_log()
    vsand_check(d)


CASES = [
    Case(5, "eager", "kill9", True, "copy"),
    Case(0, "scaling", "kill9", True, "copy"),
    Case(5, "scaling", "bgcopy.after_copy:18", True, "copy"),
    Case(0, "eager", "bgcopy.after_copy:12", True, "copy"),
    Case(5, "eager", "bgcopy.before_detach_commit:1", True, "leave"),
    Case(0, "scaling", "bgcopy.before_detach_commit:1", True, "leave"),
    Case(5, "eager", "cfw.after_copy:4", False),             # a src write's CFW (eager: into s0 too)
    Case(0, "scaling", "cfw.after_handover:6", False),
    Case(5, "scaling", "commit.after_data_sync:5", None),    # a client's FLUSH or the clone leaving
    # src's first write lands on a segment BGCOPY has just copied (a seed); the crash
    # comes at the next write's copy on first write, no commit in between (deterministic)
    Case(5, "scaling", "cfw.after_handover:2", False, seeded="uncommitted"),
    Case(0, "eager", "cfw.after_handover:2", False, seeded="committed"),
]


@pytest.mark.snapclone
@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c))
def test_kill_during_bgcopy(tmp_path, case):
    _case(tmp_path, case)


# ---- several copies at once --------------------------------------------------------------------
@pytest.mark.snapclone
def test_kill_with_running_and_queued_copies(tmp_path):
    """Three snapclones of one LUN (two copying, the third queued: at most two tasks
    step at once) and a snapshot of the first, with unflushed writes to the LUN and to
    the first clone; kill -9 while the first copy is under way. After the restart all
    three tasks resume by themselves (the queued one too) and finish; every LD reads
    what it must (the first clone: its unflushed writes or not, block by block)."""
    need("nbdcopy", "qemu-io")
    d = Daemon(tmp_path / "state", drive_size="512M", extra=["--task-rate-mib", str(RATE)])
    d.start()
    try:
        base_file = str(tmp_path / "base.img")
        img = base_image(7)
        img[16 * MiB:] = 0                          # 16 MiB of data (+ the writes): short copies
        img.tofile(base_file)
        d.ctl("lun.create", name="m", size=SIZE, raid=5)
        r = subprocess.run(["nbdcopy", f"--request-size={MiB}", base_file, d.uri("m")],
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        want, tids = {}, {}
        for i in (1, 2, 3):
            qemu_io(d, "m", [f"write -P 0x{i}1 {i * MiB + 1000 * i} 5000", f"write -P 0x{i}2 {(10 + i) * MiB} 1M",
                             "flush"])
            want[f"c{i}"] = read_lun(d, "m")
            # 2 MiB/s: the first two copies (~16 MiB each) are still under way when c1
            # has copied 4 MiB, however long the steps below take (at 8 MiB/s c1 was
            # sometimes done by then, and the queued c3 had started)
            tids[f"c{i}"] = d.ctl("snapclone.create", source="m", name=f"c{i}", rate=2 if i < 3 else 0)["task"]
        states = sorted(d.ctl("task.show", id=t)["state"] for t in tids.values())
        assert states == ["queued", "running", "running"], states
        d.ctl("snapshot.create", source="c1", name="c1s")
        want["c1s"] = want["c1"]
        qemu_io(d, "c1", ["write -P 0x41 0 3M", f"write -P 0x42 {9 * MiB + 10} 10"])      # never flushed
        c1_new = want["c1"].copy()
        c1_new[:3 * MiB] = 0x41
        c1_new[9 * MiB + 10:9 * MiB + 20] = 0x42
        qemu_io(d, "m", [f"write -P 0x51 {5 * MiB + 3} 100000", "write -P 0x52 20M 2M"])  # never flushed
        deadline = time.monotonic() + 30
        while (t := d.ctl("task.show", id=tids["c1"]))["bytes"] < 4 * MiB:
            assert t["state"] == "running" and time.monotonic() < deadline, t
            time.sleep(0.02)
        assert d.ctl("task.show", id=tids["c3"])["state"] == "queued"
        d.proc.send_signal(signal.SIGKILL)
        assert d.proc.wait(30) == -signal.SIGKILL

        d.start()
        ids = ", ".join(str(tids[c]) for c in ("c1", "c2", "c3"))
        assert f"resuming background task(s) {ids}" in d.read_log(), d.read_log()
        deadline = time.monotonic() + 60
        for c, tid in tids.items():
            while (t := d.ctl("task.show", id=tid))["state"] in ("queued", "running"):
                assert time.monotonic() < deadline, t
                time.sleep(0.05)
            detach_bug(t, d.read_log())
            assert t["state"] == "done" and t["error"] == "", (t, d.read_log())
            assert d.ctl("lun.show", name=c)["clone"] == "independent"
        old_or_new(read_lun(d, "c1"), want["c1"], c1_new, "c1 after unflushed writes")
        for name in ("c2", "c3", "c1s"):
            same(read_lun(d, name), want[name], name)
        assert names(d, "m") == ["c1s", "m"] and all(names(d, c) == [c] for c in tids)
        assert "Traceback" not in d.read_log(), d.read_log()
        assert d.stop() == 0, d.read_log()
        vsand_check(d)
    finally:
        if d.alive():
            d.stop()


# ---- the engine alone -----------------------------------------------------------------------
@pytest.mark.snapclone
@pytest.mark.parametrize("committed", [False, True], ids=["copy-not-committed", "copy-committed"])
@pytest.mark.parametrize("mode", ["eager", "scaling"])
def test_src_write_over_a_seed_then_crash(tmp_path, mode, committed):
    """BGCOPY copies segment k into the clone and keeps src's Sp over it (the seed); a
    later write to src takes the seed for "the clone has its own copy", clears it and
    writes src's segment in place. Neither the clone's copy nor the cleared seed is
    durable before src's bytes change, so after kill -9 (the write was never flushed):

    * copy not committed: the durable maps have the clone, and s0 behind it, read k
      through src, which now holds the unflushed write;
    * copy committed: the durable seed still says "the clone's copy equals src", so
      when the clone leaves the tree s0 is linked to src for k (Fig. 14) and reads
      the unflushed write; nobody ever wrote s0.

    Either way an unflushed write changes other LDs (DESIGN.md §9: unflushed writes
    may be lost, they never corrupt other data)."""
    paths = [str(tmp_path / f"d{i}.img") for i in range(8)]
    pool = Pool.create([(p, 64 * MiB, "default") for p in paths], Units(quorum=8 * MiB))
    pool.set_setting("snapclone", mode)
    src = pool.create_ld("src", 4 * MiB, raid=5)
    old = os.urandom(4 * MiB)
    src.write(0, old)
    pool.snapshot("src", "s0")
    pool.snapclone("src", "clone")                    # durable on return
    r = pool.bgcopy_step("clone", 2)                   # segments 0 and 1 copied into the clone
    assert r["copied"] == 2 and not r["done"], r
    if committed:
        pool.flush()
    src.write(100, b"new bytes")                       # partial write of segment 0, not flushed
    src.write(MiB, b"\xee" * MiB)                      # whole write of segment 1, not flushed
    assert pool.get("clone").read(0, 4 * MiB) == old   # right while the process lives
    for dr in pool.drives.values():                    # kill -9: no commit, no clean close
        dr.close()
    pool = Pool.open(paths)
    try:
        for _ in range(10):                            # the resumed BGCOPY: the clone leaves
            if pool.bgcopy_step("clone", 8)["done"]:
                break
        assert pool.get("clone").role is Role.CLONE
        for name in ("clone", "s0"):
            got = bytes(pool.get(name).read(0, 4 * MiB))
            bad = [k for k in range(4) if got[k * MiB:(k + 1) * MiB] != old[k * MiB:(k + 1) * MiB]]
            if bad:
                raise WrongBytes(f"{name} reads src's unflushed writes in segment(s) {bad} after the crash")
    finally:
        pool.close()


@pytest.mark.snapclone
def test_two_clones_copying_the_same_segments_at_once(tmp_path):
    """c1 <- c2 <- m, both copying (the daemon steps two tasks at once, each plan's
    copy running in a worker thread). c1 plans its last segments, reading them where
    m holds them; c2 copies the same segments first, so c1 now reads them through c2
    and Plan.finish rightly discards c1's copies. But plan() had already counted them
    (``left``) and moved its cursor past them, so c1's next step finds "nothing left"
    and leaves the tree: snapclone.detach asserts "detach with shared segments" and
    the task fails with an internal error (in the daemon: after a restart, with c1 and
    c2 resumed together, in about 2 runs of 5 of test_kill_with_running_and_queued_copies).
    With asserts off (python -O) the clone would leave its tree still sharing."""
    paths = [str(tmp_path / f"d{i}.img") for i in range(8)]
    pool = Pool.create([(p, 64 * MiB, "default") for p in paths], Units(quorum=8 * MiB))
    m = pool.create_ld("m", 4 * MiB, raid=0)
    old = os.urandom(4 * MiB)
    m.write(0, old)
    pool.snapclone("m", "c1")
    pool.snapclone("m", "c2")                                  # c1 <- c2 <- m
    p1 = pool.bgcopy_plan("c1", 8)                              # c1: all 4 segments, from m
    p2 = pool.bgcopy_plan("c2", 8)                              # c2: the same 4
    assert [j.k for j in p1.jobs] == [j.k for j in p2.jobs] == [0, 1, 2, 3]
    p2.io()
    assert p2.finish()["bytes"] == 4 * MiB                      # c2 owns them now
    p1.io()
    assert p1.finish()["bytes"] == 0                            # c1's copies: discarded
    try:
        for _ in range(10):
            if pool.bgcopy_step("c1", 8)["done"]:
                break
    except AssertionError as e:
        if "detach with shared segments" in str(e):
            raise DetachBug(str(e)) from e
        raise
    c1 = pool.get("c1")
    assert c1.role is Role.CLONE and c1.pred is None and c1.succ is None
    assert c1.read(0, 4 * MiB) == old
    m.write(0, b"\x77" * 4 * MiB)
    assert pool.get("c1").read(0, 4 * MiB) == old and pool.get("c2").read(0, 4 * MiB) == old
    pool.close()
    assert check_paths(paths, parity=True) == []
