"""Throw-away Ceph clusters shared by a whole test run: ONE (1 mon, 1 bluestore OSD, no mgr)
for most RADOS tests, and THREE (1 mon, 1 mgr, 3 bluestore OSDs, pool size 3 / min_size 2)
for tests that kill and restart an OSD. Each has its own directory and ports, so both can
run side by side.

Each is started lazily by the first test that asks for it (so a run that collects no such
test never starts it) with scripts/rados_up.sh, and stopped when the run ends.

pytest-xdist: ``make test`` runs two workers. The controller picks the run directory in
``configure`` (an environment variable the workers inherit); the first worker to need the
cluster starts it under a file lock there and writes ``state.json``; every other worker
reads it. Only the controller (or a run without xdist) stops the cluster, in ``finish``.
Each test gets its own RADOS namespace, so workers never see each other's objects. A test
that pauses the OSD is marked ``rados_exclusive`` and holds the use lock exclusively while
every other RADOS test holds it shared (tests/rados/conftest.py); every test on THREE holds
that cluster exclusively (it kills OSDs).
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
from dataclasses import dataclass, field

from daemonkit import ROOT, free_port

SCRIPT = os.path.join(ROOT, "scripts", "rados_up.sh")
RUN_ENV = "VSAND_RADOS_RUN"
TOOLS = ("ceph-mon", "ceph-osd", "ceph", "ceph-authtool", "monmaptool", "rados", "uuidgen")
POOL = "psegs"


@dataclass(frozen=True)
class Layout:
    """What rados_up.sh is asked to build; ``name`` is its directory and state file."""
    name: str
    env: dict = field(default_factory=dict)


# OSD_MEMORY_TARGET_MB stays at the script's 1024 (Ceph's minimum is 896) with tcmalloc
# preloaded (the script's default): idle OSDs are about 55 MiB each.
ONE = Layout("ceph", {"MGR": "0", "WAIT": "io", "N_OSDS": "1", "OSD_SIZE_GB": "4", "PG_NUM": "8"})
# The mgr is there for PG states: a test must know when recovery has ended (wait_healthy).
THREE = Layout("ceph3", {"MGR": "1", "WAIT": "health", "N_OSDS": "3", "OSD_SIZE_GB": "4",
                         "PG_NUM": "8", "POOL_SIZE": "3", "POOL_MIN_SIZE": "2",
                         "OSD_PORT_MIN": "7400", "OSD_PORT_MAX": "7900"})


@dataclass(frozen=True)
class RadosCluster:
    conf: str
    pool: str
    ceph_dir: str
    up_seconds: float
    n_osds: int = 1
    env: dict = field(default_factory=dict)     # rados_up.sh's knobs, for start-osd

    def osd_pid(self, osd: int = 0) -> int:
        with open(os.path.join(self.ceph_dir, "run", f"osd.{osd}.pid")) as f:
            return int(f.read())

    def ceph(self, *args: str, timeout: float = 30) -> str:
        p = subprocess.run(["ceph", "-c", self.conf, *args], capture_output=True, text=True,
                           timeout=timeout)
        if p.returncode:
            raise RuntimeError(f"ceph {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def kill_osd(self, osd: int) -> int:
        """kill -9 one OSD (a crashed host, as the cluster sees it); returns its pid."""
        pid = self.osd_pid(osd)
        os.kill(pid, signal.SIGKILL)
        return pid

    def start_osd(self, osd: int) -> None:
        """Start a killed OSD again on its data (``rados_up.sh start-osd``)."""
        subprocess.run(["bash", SCRIPT, "start-osd", str(osd)], env=self._script_env(),
                       check=True, capture_output=True, timeout=60)

    def osd_running(self, osd: int) -> bool:
        try:
            return _alive(self.osd_pid(osd))
        except FileNotFoundError:
            return False

    def osds_up(self) -> int:
        return json.loads(self.ceph("osd", "stat", "-f", "json"))["num_up_osds"]

    def wait_osds_up(self, n: int, deadline: float = 60) -> float:
        """Wait until the mons count ``n`` OSDs up (after a kill: the failure was noticed);
        returns the seconds waited."""
        t0 = time.monotonic()
        _until(lambda: self.osds_up() == n, f"{n} OSD(s) up", deadline)
        return time.monotonic() - t0

    def healthy(self) -> bool:
        """Every OSD up, every PG active+clean on a full acting set, HEALTH_OK. The acting
        set check matters: right after a restart the mgr may still hold PG stats from
        before the kill (all "active+clean" on 2 OSDs)."""
        if self.osds_up() != self.n_osds:
            return False
        dump = json.loads(self.ceph("pg", "dump", "pgs_brief", "-f", "json"))
        pgs = dump["pg_stats"] if isinstance(dump, dict) else dump
        if not pgs or any(p["state"] != "active+clean" or len(p["acting"]) != self.n_osds
                          for p in pgs):
            return False
        return self.ceph("health").startswith("HEALTH_OK")

    def wait_healthy(self, deadline: float = 120) -> float:
        """Wait for ``healthy`` (recovery over); returns the seconds waited."""
        t0 = time.monotonic()
        _until(self.healthy, "HEALTH_OK with every PG active+clean", deadline)
        return time.monotonic() - t0

    def rss_mib(self) -> dict[str, float]:
        """Resident memory of each daemon (mon.a, mgr.x, osd.N), MiB."""
        p = subprocess.run(["bash", SCRIPT, "rss"], env=self._script_env(), capture_output=True,
                           text=True, timeout=30)
        return {name: float(mib) for name, mib in (line.split() for line in p.stdout.splitlines())}

    def _script_env(self) -> dict:
        return dict(os.environ, CEPH_DIR=self.ceph_dir, **self.env)


def _until(cond, what: str, deadline: float) -> None:
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {deadline:.0f} s waiting for {what}")
        time.sleep(0.25)


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
    for layout in (ONE, THREE):
        ceph_dir = os.path.join(run, layout.name)
        if os.path.isdir(ceph_dir):
            subprocess.run(["bash", SCRIPT, "purge"], env=dict(os.environ, CEPH_DIR=ceph_dir),
                           capture_output=True, timeout=120)
    shutil.rmtree(run, ignore_errors=True)


def finish(config) -> None:
    """Controller side, at the end of the run: stop the clusters workers started."""
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


def _start(run: str, layout: Layout) -> dict:
    reason = missing()
    if reason:
        return {"error": reason}
    ceph_dir = os.path.join(run, layout.name)
    env = dict(os.environ, CEPH_DIR=ceph_dir, MON_PORT_V2=str(free_port()),
               MON_PORT_V1=str(free_port()), POOL=POOL, **layout.env)
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
            "up_seconds": round(time.monotonic() - t0, 2), "n_osds": int(layout.env["N_OSDS"]),
            "env": {k: v for k, v in env.items() if k.startswith("OSD_")}}


def shared_cluster(layout: Layout = ONE) -> tuple[RadosCluster | None, str]:
    """The run's cluster of ``layout`` (started here if no worker has yet), or None and
    the reason."""
    run = os.environ.get(RUN_ENV)
    if not run:         # the root conftest did not run configure (e.g. another rootdir)
        run = os.path.join(tempfile.gettempdir(), f"vsand-rados-{os.getpid()}")
        os.environ[RUN_ENV] = run
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, f"{layout.name}.start.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = os.path.join(run, f"{layout.name}.state.json")
        if os.path.exists(path):
            with open(path) as f:
                state = json.load(f)
        else:
            state = _start(run, layout)
            with open(path, "w") as f:
                json.dump(state, f)
    if "error" in state:
        return None, state["error"]
    return RadosCluster(state["conf"], state["pool"], state["ceph_dir"], state["up_seconds"],
                        state["n_osds"], state["env"]), ""


@contextmanager
def cluster_use(exclusive: bool, layout: Layout = ONE):
    """Shared by ordinary RADOS tests, exclusive for one that stops or kills an OSD."""
    with open(os.path.join(os.environ[RUN_ENV], f"{layout.name}.use.lock"), "a+") as lock:
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
