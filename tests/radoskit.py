"""One throw-away Ceph cluster (1 mon, 1 bluestore OSD, no mgr) shared by a whole test run.

Started lazily by the first test that asks for it (so a run that collects no RADOS test
never starts Ceph) with scripts/rados_up.sh, and stopped when the run ends.

pytest-xdist: ``make test`` runs two workers. The controller picks the run directory in
``configure`` (an environment variable the workers inherit); the first worker to need the
cluster starts it under a file lock there and writes ``state.json``; every other worker
reads it. Only the controller (or a run without xdist) stops the cluster, in ``finish``.
Each test gets its own RADOS namespace, so workers never see each other's objects. A test
that pauses the OSD is marked ``rados_exclusive`` and holds the use lock exclusively while
every other RADOS test holds it shared (tests/rados/conftest.py).
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

from daemonkit import ROOT, free_port

SCRIPT = os.path.join(ROOT, "scripts", "rados_up.sh")
RUN_ENV = "VSAND_RADOS_RUN"
TOOLS = ("ceph-mon", "ceph-osd", "ceph", "ceph-authtool", "monmaptool", "rados", "uuidgen")
POOL = "psegs"


@dataclass(frozen=True)
class RadosCluster:
    conf: str
    pool: str
    ceph_dir: str
    up_seconds: float

    def osd_pid(self, osd: int = 0) -> int:
        with open(os.path.join(self.ceph_dir, "run", f"osd.{osd}.pid")) as f:
            return int(f.read())


def configure(config) -> None:
    """Controller side: name this run's directory before the xdist workers are spawned,
    and stop clusters left by runs that were killed (their controller pid is gone)."""
    if hasattr(config, "workerinput"):
        return
    os.environ[RUN_ENV] = os.path.join(tempfile.gettempdir(), f"vsand-rados-{os.getpid()}")
    for run in glob.glob(os.path.join(tempfile.gettempdir(), "vsand-rados-*")):
        pid = run.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            _purge(run)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"     # a killed, unreaped run
    except FileNotFoundError:
        return False


def _purge(run: str) -> None:
    ceph_dir = os.path.join(run, "ceph")
    if os.path.isdir(ceph_dir):
        subprocess.run(["bash", SCRIPT, "purge"], env=dict(os.environ, CEPH_DIR=ceph_dir),
                       capture_output=True, timeout=120)
    shutil.rmtree(run, ignore_errors=True)


def finish(config) -> None:
    """Controller side, at the end of the run: stop the cluster if a worker started one."""
    run = os.environ.get(RUN_ENV)
    if hasattr(config, "workerinput") or not run or not os.path.isdir(run):
        return
    _purge(run)


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    from plugins.rados import available
    lack = [t for t in TOOLS if not shutil.which(t)]
    if lack:
        return f"Ceph is not installed ({', '.join(lack)} missing; make test installs it as root)"
    if os.geteuid() != 0:
        return "the test cluster's daemons run as root"
    return available()


def _start(run: str) -> dict:
    reason = missing()
    if reason:
        return {"error": reason}
    ceph_dir = os.path.join(run, "ceph")
    env = dict(os.environ, CEPH_DIR=ceph_dir, MGR="0", WAIT="io", N_OSDS="1", OSD_SIZE_GB="4",
               MON_PORT_V2=str(free_port()), MON_PORT_V1=str(free_port()), POOL=POOL, PG_NUM="8")
    t0 = time.monotonic()
    try:
        p = subprocess.run(["bash", SCRIPT, "up"], env=env, capture_output=True, text=True,
                           timeout=180)
    except subprocess.TimeoutExpired:
        return {"error": "the test cluster did not come up within 180 s", "ceph_dir": ceph_dir}
    if p.returncode != 0:
        tail = (p.stdout + p.stderr).strip().splitlines()[-6:]
        return {"error": "the test cluster did not come up: " + " | ".join(tail),
                "ceph_dir": ceph_dir}
    return {"conf": os.path.join(ceph_dir, "ceph.conf"), "pool": POOL, "ceph_dir": ceph_dir,
            "up_seconds": round(time.monotonic() - t0, 2)}


def shared_cluster() -> tuple[RadosCluster | None, str]:
    """The run's cluster (started here if no worker has yet), or None and the reason."""
    run = os.environ.get(RUN_ENV)
    if not run:         # the root conftest did not run configure (e.g. another rootdir)
        run = os.path.join(tempfile.gettempdir(), f"vsand-rados-{os.getpid()}")
        os.environ[RUN_ENV] = run
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, "start.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = os.path.join(run, "state.json")
        if os.path.exists(path):
            with open(path) as f:
                state = json.load(f)
        else:
            state = _start(run)
            with open(path, "w") as f:
                json.dump(state, f)
    if "error" in state:
        return None, state["error"]
    return RadosCluster(state["conf"], state["pool"], state["ceph_dir"], state["up_seconds"]), ""


@contextmanager
def cluster_use(exclusive: bool):
    """Shared by ordinary RADOS tests, exclusive for one that stops the OSD."""
    with open(os.path.join(os.environ[RUN_ENV], "use.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def osd_stopped(cluster: RadosCluster):
    """SIGSTOP the OSD (a hung disk or host, as clients see it), SIGCONT it afterwards."""
    pid = cluster.osd_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)
