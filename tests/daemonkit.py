"""A real vsand daemon process for the interop and kernel tests, and helpers to reach it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from vsand.control.client import call

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VSAND = [sys.executable, "-m", "vsand"]
SYS_PY = "/usr/bin/python3"
O_DIRECT = 0o40000          # x86-64 and arm64; os.O_DIRECT is the same number here


def need(*tools: str) -> None:
    for t in tools:
        if not shutil.which(t):
            pytest.skip(f"{t} is not installed (make test installs it as root)")


def healthy(daemon) -> None:
    assert daemon.alive(), daemon.read_log()
    assert "Traceback" not in daemon.read_log(), daemon.read_log()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(RuntimeError):
    pass


class Daemon:
    def __init__(self, state_dir: str, drives: int = 8, drive_size: str = "1G", extra=(),
                 env: dict | None = None, overcommit_warn: str = "off"):
        """``overcommit_warn``: off unless a test is about it, since most tests make
        thin LUNs bigger than their small pools on purpose and vsanctl would warn."""
        self.state_dir = str(state_dir)
        self.port = free_port()
        self.sock = os.path.join(self.state_dir, "nbd.sock")
        self.control = os.path.join(self.state_dir, "control.sock")
        self.args = VSAND + ["--state-dir", self.state_dir, "--drives", str(drives),
                             "--drive-size", drive_size, "--listen", f"127.0.0.1:{self.port}",
                             "--overcommit-warn", overcommit_warn, *extra]
        self.proc: subprocess.Popen | None = None
        self.log = os.path.join(self.state_dir, "daemon.log")
        self.env = env or {}

    def start(self) -> "Daemon":
        for _ in range(3):
            try:
                return self._start()
            except PortTaken:
                # free_port() let the port go before the daemon bound it, and another
                # process (a client's ephemeral port, another pytest worker) took it
                listen = f"127.0.0.1:{self.port}"
                self.port = free_port()
                self.args = [f"127.0.0.1:{self.port}" if a == listen else a for a in self.args]
        return self._start()

    def _start(self) -> "Daemon":
        os.makedirs(self.state_dir, exist_ok=True)
        if os.path.exists(self.control):
            os.unlink(self.control)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        logged = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        self.proc = subprocess.Popen(self.args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     env=env, cwd=ROOT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                with open(self.log, errors="replace") as f:
                    f.seek(logged)
                    new = f.read()
                if f"--listen 127.0.0.1:{self.port}" in " ".join(self.args) and \
                        f"127.0.0.1:{self.port}" in new and "in use" in new:
                    raise PortTaken(new)
                raise RuntimeError(f"vsand exited with {self.proc.returncode}:\n{self.read_log()}")
            if os.path.exists(self.control):
                try:
                    self.ctl("status")
                    return self
                except Exception:
                    pass
            time.sleep(0.05)
        raise RuntimeError("vsand did not start:\n" + self.read_log())

    def read_log(self) -> str:
        try:
            return open(self.log).read()[-5000:]
        except OSError:
            return ""

    def ctl(self, op: str, **args):
        return call(self.control, op, **args)

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def drive_flags(self) -> dict[str, int]:
        """Open flags (/proc/PID/fdinfo) of the daemon's descriptors of image files
        and block devices, by path."""
        out = {}
        for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.proc.pid}/fd/{fd}")
                info = open(f"/proc/{self.proc.pid}/fdinfo/{fd}").read()
            except OSError:
                continue            # closed meanwhile
            if target.endswith(".img") or target.startswith("/dev/") and stat.S_ISBLK(os.stat(target).st_mode):
                out[target] = int(re.search(r"^flags:\s+([0-7]+)", info, re.M).group(1), 8)
        return out

    def uri(self, name: str, tcp: bool = False) -> str:
        if tcp:
            return f"nbd://127.0.0.1:{self.port}/{name}"
        return f"nbd+unix:///{name}?socket={self.sock}"


def vsanctl(daemon, *args, rc: int = 0) -> subprocess.CompletedProcess:
    """vsanctl as a subprocess against ``daemon``; checks the exit code and, for an
    error, that stderr is one "vsanctl: ..." line."""
    env = dict(os.environ)
    env.pop("VSAN_CONTROL", None)
    cmd = [sys.executable, "-m", "vsand.cli.vsanctl", "--control", daemon.control] + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert r.returncode == rc, f"{cmd} -> {r.returncode} (want {rc})\nstdout: {r.stdout}\nstderr: {r.stderr}"
    if rc:
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("vsanctl: "), f"want one error line, got {r.stderr!r}"
    return r


def run(cmd, check=True, timeout=300, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} -> {r.returncode}\nstdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}")
    return r
