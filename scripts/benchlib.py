"""Helpers shared by the benchmark scripts (not part of vsand). Import after putting
the repository root on sys.path, as the scripts do."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

from vsand.control.client import call


def wait_for(path: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Waits until ``proc`` has created ``path`` (a socket), failing if it exits."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not appear")


# ---- fio ---------------------------------------------------------------------------------------
def nbd_engine(uri: str) -> list[str]:
    return ["--ioengine=nbd", f"--uri={uri}"]


def file_engine(path: str, direct: bool) -> list[str]:
    return ["--ioengine=libaio", f"--filename={path}", f"--direct={int(direct)}"]


def job_options(rw: str, bs: str, qd: int) -> list[str]:
    return [f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}"]


def run_fio(options: list[str]) -> list[dict]:
    """Runs fio with ``options`` (global ones, then ``--name=`` and the options of each
    job) and returns its JSON "jobs", one per job, in order."""
    cmd = ["fio", "--output-format=json", "--randrepeat=0", "--norandommap", *options]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr[-2000:]}")
    # the nbd engine prints "connected to NBD server" ahead of the JSON
    return json.loads(r.stdout[r.stdout.index("{"):])["jobs"]


def job_stats(job: dict, side: str) -> dict:
    """IOPS, MiB/s, I/O count and p99 completion latency (us) of one side ("read" or
    "write") of one fio job."""
    s = job[side]
    return {"iops": s["iops"], "mibs": s["bw_bytes"] / 2**20, "ios": s["total_ios"],
            "p99_us": s["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000}


def fio(uri: str | None, rw: str, bs: str, qd: int, size: int, runtime: int,
        engine: list[str] | None = None) -> dict:
    """One fio job, by default on the nbd engine against ``uri``: IOPS, MiB/s, I/O
    count and p99 latency (us). ``runtime`` 0 goes once over ``size``."""
    opts = [*(engine or nbd_engine(uri)), f"--size={size}"]
    if runtime:
        opts += [f"--runtime={runtime}", "--time_based"]
    job = run_fio([*opts, "--name=j", *job_options(rw, bs, qd)])[0]
    return job_stats(job, "read" if "read" in rw else "write")


# ---- servers -----------------------------------------------------------------------------------
class Servers:
    """The server processes of one benchmark run; leaving the ``with`` block stops them
    (SIGTERM, so vsand checkpoints and exits as in production)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Servers":
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def spawn(self, cmd: list[str], ready: str, **popen) -> subprocess.Popen:
        """Starts ``cmd`` and returns once it has created the socket ``ready``."""
        self.procs.append(subprocess.Popen(cmd, **popen))
        wait_for(ready, self.procs[-1])
        return self.procs[-1]

    def nbdkit_file(self, image: str, sock: str) -> str:
        """Serves ``image`` with nbdkit's file plugin on UNIX socket ``sock``; returns the URI."""
        self.spawn(["nbdkit", "-f", "-U", sock, "file", image], sock)
        return f"nbd+unix:///?socket={sock}"

    def vsand(self, state: str, drive_size: int, drives: int = 8, src: str | None = None,
              extra: list[str] | None = None) -> "Vsand":
        """Starts vsand on ``drives`` sparse image files under ``state``, UNIX sockets only;
        ``src``: a directory holding another ``vsand`` package to run instead of this one;
        ``extra``: more flags (e.g. another backend's)."""
        v = Vsand(state)
        env = None
        if src:     # PYTHONPATH comes before the editable install's finder
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                p for p in (os.path.abspath(src), os.environ.get("PYTHONPATH")) if p)}
        self.spawn([sys.executable, "-m", "vsand", "--state-dir", state, "--drives", str(drives),
                    "--drive-size", str(drive_size), "--listen", "none", "--log-level", "warning",
                    *(extra or [])], v.control, env=env)
        # the control socket appears a moment before the daemon answers on it
        time.sleep(0.2)
        return v


    def qemu_nbd(self, filename: str, sock: str, cache: str = "writeback") -> str:
        """Serves ``filename`` (any qemu block filename, e.g. ``rbd:pool/image:conf=...``) with
        qemu-nbd on UNIX socket ``sock``, up to 4 clients at once; returns the URI."""
        self.spawn(["qemu-nbd", "--format=raw", f"--socket={sock}", "--persistent", "--shared=4",
                    f"--cache={cache}", filename], sock)
        return f"nbd+unix:///?socket={sock}"


class Vsand:
    def __init__(self, state: str) -> None:
        self.state = state
        self.control = os.path.join(state, "control.sock")
        self.nbd = os.path.join(state, "nbd.sock")

    def call(self, op: str, **args):
        return call(self.control, op, **args)

    def uri(self, lun: str) -> str:
        return f"nbd+unix:///{lun}?socket={self.nbd}"

    def drive_paths(self) -> list[str]:
        d = os.path.join(self.state, "drives")
        return sorted(os.path.join(d, n) for n in os.listdir(d))


def export_tree(repo: str, rev: str, dest: str) -> str:
    """Writes the ``vsand`` package of commit ``rev`` under ``dest`` (for ``Servers.vsand``'s
    ``src``) and returns the full commit id: a benchmark can pin the code it measures
    while the working tree changes under it."""
    def git(*args: str) -> bytes:
        r = subprocess.run(["git", "-C", repo, *args], capture_output=True)
        if r.returncode:
            raise RuntimeError(f"git {' '.join(args)}: {r.stderr.decode().strip()}")
        return r.stdout

    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}").decode().strip()
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(git("archive", "--format=tar", commit, "vsand"))) as t:
        t.extractall(dest, filter="data")
    return commit


def tree_state(repo: str) -> str:
    """The commit of ``repo`` and whether vsand/ differs from it (what a run measured)."""
    head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "vsand"],
                           capture_output=True, text=True).stdout.strip()
    return f"{head}{' + uncommitted changes to vsand/' if dirty else ''} (working tree)"


# ---- page cache --------------------------------------------------------------------------------
def cold_unavailable() -> str | None:
    """Why caches cannot be dropped here, or None when they can."""
    if os.geteuid() != 0:
        return "not root: dropping the page cache needs root"
    if not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        return "/proc/sys/vm/drop_caches is not writable (a container?)"
    return None


def drop_caches() -> None:
    os.sync()   # dirty pages survive drop_caches; write them out first
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def cache_files(paths: list[str]) -> int:
    """Reads the data extents of ``paths`` into the page cache; returns bytes read. Holes
    are skipped: on sparse drive images reading them would fill the cache with zeros."""
    buf = memoryview(bytearray(4 << 20))
    total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            size, off = os.fstat(fd).st_size, 0
            while off < size:
                try:
                    off = os.lseek(fd, off, os.SEEK_DATA)
                except OSError:     # ENXIO: no data past off
                    break
                hole = os.lseek(fd, off, os.SEEK_HOLE)
                while off < hole:
                    n = os.preadv(fd, [buf[:min(len(buf), hole - off)]], off)
                    if n <= 0:      # shrunk under us: go on past this extent
                        off = hole
                        break
                    off += n
                    total += n
        finally:
            os.close(fd)
    return total
