"""vsanctl snapclone / task / pool against a real daemon: table and --json output,
every error path (one stderr line, exit 1 for the daemon, 2 for usage), `task wait`
exit codes, cancel and restart of a copy, resume after a daemon restart, and pool
settings that survive one. Tests marked `snapclone` drive the engine's snapclone
calls (pool.snapclone, bgcopy_step, clone_state)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from daemonkit import Daemon, need, run

VSANCTL = [sys.executable, "-m", "vsand.cli.vsanctl"]
MiB = 1 << 20


def vsanctl(daemon, *args, rc=0, timeout=120):
    """Runs vsanctl; checks the exit code and, for errors, the one-line stderr."""
    cmd = VSANCTL + ["--control", daemon.control] + [str(a) for a in args]
    env = dict(os.environ)
    env.pop("VSAN_CONTROL", None)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert r.returncode == rc, f"{cmd} -> {r.returncode} (want {rc})\nstdout: {r.stdout}\nstderr: {r.stderr}"
    if rc:
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("vsanctl: "), f"want one error line, got {r.stderr!r}"
    else:
        assert r.stderr == "", r.stderr
    return r


def js(daemon, *args):
    return json.loads(vsanctl(daemon, "--json", *args).stdout)


def json_lines(text: str) -> list[dict]:
    return [json.loads(ln) for ln in text.splitlines()]


def task_of(daemon, target) -> dict:
    return [t for t in js(daemon, "task", "list") if t["target"] == target][-1]


# ---- tasks and settings: no snapclone needed --------------------------------------------
MISSING_TASK = [
    (["task", "show", "999"], "vsanctl: task show: no task 999"),
    (["task", "cancel", "999"], "vsanctl: task cancel: no task 999"),
    (["task", "wait", "999"], "vsanctl: task wait: no task 999"),
    (["task", "set", "999", "--rate", "5"], "vsanctl: task set: no task 999"),
]


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
@pytest.mark.parametrize("args,msg", MISSING_TASK, ids=[" ".join(a) for a, _ in MISSING_TASK])
def test_unknown_task_id(daemon, args, msg, as_json):
    r = vsanctl(daemon, *(["--json"] if as_json else []), *args, rc=1)
    assert r.stderr.strip() == msg and r.stdout == ""


USAGE = [
    (["task", "show", "x"], "argument ID: not a task id: 'x'"),
    (["task", "show", "0"], "not a task id: '0'"),
    (["task", "set", "1"], "required: --rate"),
    (["task", "set", "1", "--rate", "-1"], "rate must be >= 0"),
    (["snapclone", "create", "a", "b", "--rate", "fast"], "not a whole number of MiB/s: 'fast'"),
    (["snapclone", "create", "a"], "required: NAME"),
    (["pool", "set", "snapclone_mode"], "required: VALUE"),
    (["task"], "vsanctl: task: the following arguments are required: COMMAND"),
]


@pytest.mark.parametrize("args,msg", USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_usage_errors(daemon, args, msg):
    r = vsanctl(daemon, *args, rc=2)
    assert msg in r.stderr


def test_task_list_starts_empty(fresh_daemon):
    assert vsanctl(fresh_daemon, "task", "list").stdout.strip() == "no tasks"
    assert js(fresh_daemon, "task", "list") == []
    out = vsanctl(fresh_daemon, "status").stdout
    assert "0 running, 0 queued" in out
    st = js(fresh_daemon, "status")
    assert st["tasks_running"] == st["tasks_queued"] == 0


def test_pool_show_and_set(daemon):
    got = js(daemon, "pool", "show")
    assert got["choices"] == {"snapclone_mode": ["eager", "scaling"]}
    assert got["tasks"] == {"rate_mib": 0, "latency_guard": True}
    out = vsanctl(daemon, "pool", "show").stdout
    assert "snapclone_mode" in out and "unlimited" in out and "latency guard" in out
    for mode in ("scaling", "eager"):
        assert vsanctl(daemon, "pool", "set", "snapclone_mode", mode).stdout.strip() == f"snapclone_mode = {mode}"
        got = js(daemon, "pool", "show")
        assert got["settings"]["snapclone_mode"] == mode and "snapclone_mode" not in got["defaults"]
        assert "(default)" not in vsanctl(daemon, "pool", "show").stdout


@pytest.mark.parametrize("key,value,msg", [
    ("snapclone_mode", "lazy", "vsanctl: pool set: snapclone_mode must be one of eager, scaling, not 'lazy'"),
    ("snapclone_mode", "", "must be one of eager, scaling"),
    ("colour", "blue", "vsanctl: pool set: unknown pool setting 'colour' (known: snapclone_mode)"),
])
def test_pool_set_refuses_bad_settings(daemon, key, value, msg):
    before = js(daemon, "pool", "show")["settings"]
    r = vsanctl(daemon, "pool", "set", key, value, rc=1)
    assert r.stderr.strip().startswith(msg) if msg.startswith("vsanctl") else msg in r.stderr
    assert js(daemon, "pool", "show")["settings"] == before


def test_pool_setting_survives_a_restart(tmp_path):
    d = Daemon(tmp_path / "state").start()
    try:
        assert "snapclone_mode" in js(d, "pool", "show")["defaults"]
        vsanctl(d, "pool", "set", "snapclone_mode", "scaling")
        assert d.stop() == 0
        d.start()
        got = js(d, "pool", "show")
        assert got["settings"]["snapclone_mode"] == "scaling" and got["defaults"] == []
    finally:
        d.stop()


def test_daemon_config_sets_task_limits(tmp_path):
    d = Daemon(tmp_path / "state", extra=["--task-rate-mib", "40", "--latency-guard", "off"]).start()
    try:
        assert js(d, "pool", "show")["tasks"] == {"rate_mib": 40, "latency_guard": False}
        out = vsanctl(d, "pool", "show").stdout
        assert "40 MiB/s" in out and "latency guard    off" in out
    finally:
        d.stop()


# ---- snapclones --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def src(daemon):
    vsanctl(daemon, "lun", "create", "t-src", "--size", "64M", "--thick")
    return "t-src"


@pytest.mark.snapclone
@pytest.mark.parametrize("args,msg", [
    (["snapclone", "create", "nope", "x1"], "vsanctl: snapclone create: no logical disk named 'nope'"),
    (["snapclone", "create", "t-src", "t-src"], "vsanctl: snapclone create: logical disk 't-src' exists"),
    (["snapclone", "create", "t-src", "a/b"], "bad LD name"),
    (["snapclone", "copy", "nope"], "vsanctl: snapclone copy: no logical disk named 'nope'"),
    (["snapclone", "copy", "t-src"], "vsanctl: snapclone copy: t-src is not a dependent snapclone: nothing to copy"),
])
def test_snapclone_errors(daemon, src, args, msg):
    before = {t["id"] for t in js(daemon, "task", "list")}
    r = vsanctl(daemon, *args, rc=1)
    assert r.stderr.strip().startswith(msg) if msg.startswith("vsanctl") else msg in r.stderr
    assert {t["id"] for t in js(daemon, "task", "list")} == before      # no task was started
    assert "x1" not in {i["name"] for i in js(daemon, "lun", "list")}


@pytest.mark.snapclone
def test_snapclone_create_wait_json(daemon, src):
    r = vsanctl(daemon, "--json", "snapclone", "create", src, "w-json", "--wait")
    lines = json_lines(r.stdout)
    created, polls = lines[0], lines[1:]
    assert created["name"] == "w-json" and created["snapclone_of"] == src and isinstance(created["task"], int)
    assert polls and all(p["id"] == created["task"] and p["kind"] == "bgcopy" for p in polls)
    last = polls[-1]
    assert last["state"] == "done" and last["done"] == last["total"] and last["remaining"] == 0
    assert last["bytes"] == 64 * MiB and last["error"] == ""
    assert last["finished"] >= last["started"] >= last["created"]
    info = js(daemon, "lun", "show", "w-json")
    assert info["clone"] == "independent" and info["allocated"] == 64 * MiB
    assert js(daemon, "task", "show", created["task"]) == {**last, "mib_s": 0.0, "eta": None}


@pytest.mark.snapclone
def test_snapclone_create_human_output_and_task_views(daemon, src):
    r = vsanctl(daemon, "snapclone", "create", src, "w-human", "--wait")
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"created snapclone w-human of {src}; copying in task ")
    tid = int(first.rsplit(" ", 1)[1])
    last = r.stdout.splitlines()[-1]     # not a terminal: plain lines
    assert last.startswith(f"task {tid} bgcopy w-human: done, ") and "64 MiB copied" in last
    show = vsanctl(daemon, "task", "show", tid).stdout
    assert "state       done" in show and "64/64 (100%)" in show and "target      w-human" in show
    rows = vsanctl(daemon, "task", "list").stdout.splitlines()
    assert rows[0].split()[:4] == ["ID", "KIND", "TARGET", "STATE"]
    row = next(ln for ln in rows if ln.split()[0] == str(tid))
    assert row.split()[1:5] == ["bgcopy", "w-human", "done", "64/64"]
    r = vsanctl(daemon, "task", "set", tid, "--rate", "5", rc=1)
    assert r.stderr.strip() == f"vsanctl: task set: task {tid} has already finished (done)"


@pytest.mark.snapclone
def test_clone_reads_like_the_source_at_creation(daemon):
    need("nbdcopy", "qemu-io")
    vsanctl(daemon, "lun", "create", "d-src", "--size", "32M")
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 8M", "-c", "write -P 0xa5 20M 3M", daemon.uri("d-src")])
    tid = js(daemon, "snapclone", "create", "d-src", "d-clone", "--rate", "4")["task"]
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x11 0 32M", daemon.uri("d-src")])    # overwrite all
    vsanctl(daemon, "task", "wait", tid)          # 4 MiB/s: the overwrite races the copy
    for pattern, off, n in (("0x5a", "0", "8M"), ("0", "8M", "12M"), ("0xa5", "20M", "3M"), ("0", "23M", "9M")):
        run(["qemu-io", "-f", "raw", "-r", "-c", f"read -P {pattern} {off} {n}", daemon.uri("d-clone")])


@pytest.mark.snapclone
def test_cancel_then_copy_again(daemon, src):
    tid = js(daemon, "snapclone", "create", src, "c-slow", "--rate", "1")["task"]
    assert js(daemon, "task", "show", tid)["rate"] == 1
    got = js(daemon, "task", "cancel", tid)
    assert got["state"] == "cancelled" and got["finished"]
    r = vsanctl(daemon, "task", "wait", tid, rc=1)
    assert r.stderr.strip() == f"vsanctl: task wait: task {tid} (bgcopy c-slow) was cancelled"
    r = vsanctl(daemon, "task", "cancel", tid, rc=1)
    assert f"task {tid} has already finished (cancelled)" in r.stderr
    assert js(daemon, "lun", "show", "c-slow")["clone"] == "copying"      # still dependent
    row = next(ln for ln in vsanctl(daemon, "lun", "list").stdout.splitlines() if ln.startswith("c-slow "))
    assert row.endswith(f"snapclone of {src} (copying)  copying")     # KIND, STATE
    again = js(daemon, "snapclone", "copy", "c-slow", "--rate", "1")
    assert again["id"] > tid and again["target"] == "c-slow" and again["state"] in ("queued", "running")
    r = vsanctl(daemon, "snapclone", "copy", "c-slow", rc=1)               # one copy at a time
    assert f"task {again['id']} is already working on c-slow" in r.stderr
    assert js(daemon, "task", "set", again["id"], "--rate", "0")["rate"] == 0
    vsanctl(daemon, "task", "wait", again["id"])
    assert js(daemon, "lun", "show", "c-slow")["clone"] == "independent"


@pytest.mark.snapclone
def test_deleting_a_clone_cancels_its_copy(daemon, src):
    tid = js(daemon, "snapclone", "create", src, "c-gone", "--rate", "1")["task"]
    vsanctl(daemon, "lun", "delete", "c-gone")
    got = js(daemon, "task", "show", tid)
    assert got["state"] == "cancelled" and got["error"] == "c-gone was deleted"
    r = vsanctl(daemon, "--json", "task", "wait", tid, rc=1)
    assert json_lines(r.stdout)[-1]["state"] == "cancelled"
    assert "was cancelled: c-gone was deleted" in r.stderr


@pytest.mark.snapclone
def test_failed_task_wait_exits_1(tmp_path):
    d = Daemon(tmp_path / "state", env={"VSAND_TASK_FAULT": "bgcopy:2"}).start()
    try:
        vsanctl(d, "lun", "create", "f-src", "--size", "32M", "--thick")
        r = vsanctl(d, "--json", "snapclone", "create", "f-src", "f-clone", "--rate", "8", "--wait", rc=1)
        lines = json_lines(r.stdout)
        tid = lines[0]["task"]
        assert lines[-1]["state"] == "failed" and "injected fault" in lines[-1]["error"]
        assert r.stderr.strip().startswith(f"vsanctl: snapclone create: task {tid} (bgcopy f-clone) failed: injected")
        r = vsanctl(d, "task", "wait", tid, rc=1)
        assert r.stderr.startswith(f"vsanctl: task wait: task {tid} (bgcopy f-clone) failed: injected")
        assert "failed" in r.stdout
        assert "injected fault" in vsanctl(d, "task", "list").stdout
        assert js(d, "lun", "show", "f-clone")["clone"] == "copying"      # usable, still dependent
        vsanctl(d, "snapclone", "copy", "f-clone", "--wait")               # the fault fired once
        assert js(d, "lun", "show", "f-clone")["clone"] == "independent"
    finally:
        assert d.stop() == 0


@pytest.mark.snapclone
def test_running_copy_resumes_after_a_restart(tmp_path):
    d = Daemon(tmp_path / "state").start()
    try:
        vsanctl(d, "lun", "create", "r-src", "--size", "256M", "--thick")
        tid = js(d, "snapclone", "create", "r-src", "r-clone", "--rate", "8")["task"]
        vsanctl(d, "--json", "task", "show", tid)
        assert d.stop() == 0                             # SIGTERM: stops at a step boundary
        assert "Traceback" not in d.read_log()
        d.start()
        got = js(d, "task", "show", tid)
        assert got["state"] in ("queued", "running") and got["rate"] == 8
        assert f"resuming background task(s) {tid}" in d.read_log()
        vsanctl(d, "task", "set", tid, "--rate", "0")
        vsanctl(d, "task", "wait", tid)
        got = js(d, "task", "show", tid)
        assert got["state"] == "done" and got["bytes"] >= 256 * MiB
        assert js(d, "lun", "show", "r-clone")["clone"] == "independent"
        nxt = js(d, "snapclone", "create", "r-src", "r-clone2")["task"]
        assert nxt == tid + 1                            # ids go on from the saved ones
    finally:
        d.stop()


@pytest.mark.snapclone
def test_copy_progress_counts_only_the_segments_to_copy(daemon):
    """Issue 13 item 8: a copy of a partly written LUN started at 47 %, its total
    (every segment, holes included) dropping to the copied ones at the end. Now the
    total is the allocated segments to copy, fixed from the start; progress starts
    near 0 and only grows; the ETA is "-" until there is a rate."""
    need("qemu-io")
    vsanctl(daemon, "lun", "create", "p-src", "--size", "256M")
    written = list(range(3, 256, 8))[:24]              # 24 scattered 1 MiB segments
    run(["qemu-io", "-f", "raw", *[a for k in written for a in ("-c", f"write -P 0x{k:02x} {k}M 1M")],
         daemon.uri("p-src")])
    r = vsanctl(daemon, "--json", "snapclone", "create", "p-src", "p-cl", "--rate", "4", "--wait")
    lines = json_lines(r.stdout)
    polls = lines[1:]
    running = [p for p in polls if p["state"] == "running"]
    assert len(running) >= 5, polls                      # 24 MiB at 4 MiB/s: ~6 s of polls
    assert {p["total"] for p in polls} == {len(written)}, [(p["done"], p["total"]) for p in polls]
    assert running[0]["done"] <= 0.25 * len(written), running[0]
    dones = [p["done"] for p in polls]
    assert dones == sorted(dones) and dones[-1] == len(written) and polls[-1]["state"] == "done"
    assert all(p["done"] + p["remaining"] == p["total"] for p in polls)
    assert polls[-1]["bytes"] == len(written) * MiB
    etas = [p["eta"] for p in running]
    assert etas[0] is None and any(e is not None for e in etas), etas
