"""The daemon's log as an audit trail (issue 13 item 7), against a real daemon:
every change made with vsanctl is one line with the caller's uid and pid, what it
asked and how it went; every NBD connection that ends is one line with its
export, its peer and why."""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

from daemonkit import Daemon

VSANCTL = [sys.executable, "-m", "vsand.cli.vsanctl"]
SYS_ENV = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))   # nbdsh: system python3
WHO = f"uid={os.getuid()}" + ("(root)" if os.getuid() == 0 else "")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("vsand-audit"), drives=6, drive_size="512M").start()
    yield d
    assert d.stop() == 0, d.read_log()


def log_text(d) -> str:
    with open(d.log) as f:
        return f.read()


def wait_line(d, pattern: str, timeout: float = 30) -> str:
    """The first log line matching ``pattern`` (a regex), once the daemon wrote it."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        for line in log_text(d).splitlines():
            if rx.search(line):
                return line
        assert time.monotonic() < deadline, f"no log line like {pattern!r}:\n{log_text(d)[-3000:]}"
        time.sleep(0.02)


def vsanctl(d, *args) -> tuple[int, int]:
    """(pid, exit status) of one vsanctl run."""
    p = subprocess.Popen(VSANCTL + ["--control", d.control, *map(str, args)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p.pid, p.wait(60)


def audit_lines(d, pid: int) -> list[str]:
    return [line for line in log_text(d).splitlines() if f"audit: {WHO} pid={pid} " in line]


CHANGES = [
    (("lun", "create", "a1", "--size", "1G", "--raid", "5"), 0, "lun.create name=a1 size=1 GiB raid=5: ok"),
    (("lun", "resize", "a1", "+1G"), 0, "lun.resize name=a1 allow_shrink=False delta=+1 GiB: ok"),
    (("lun", "set", "a1", "--read-only", "on"), 0, "lun.set name=a1 read_only=True: ok"),
    (("snapshot", "create", "a1", "a1-snap"), 0, "snapshot.create source=a1 name=a1-snap: ok"),
    (("snapshot", "delete", "a1"), 1, "snapshot.delete name=a1: refused: a1 is a LUN, not a snapshot"),
    (("lun", "delete", "nope"), 1, "lun.delete name=nope: refused: "),
    (("pool", "set", "snapclone_mode", "eager"), 0, "pool.set key=snapclone_mode value=eager: ok"),
    (("lun", "delete", "a1-snap"), 0, "lun.delete name=a1-snap: ok"),
]


def test_each_change_is_one_audit_line_with_who_what_and_outcome(daemon):
    for args, rc, want in CHANGES:
        pid, got = vsanctl(daemon, *args)
        assert got == rc, (args, got)
        wait_line(daemon, re.escape(f"pid={pid} "))
        lines = audit_lines(daemon, pid)
        assert len(lines) == 1 and f"vsand.audit INFO audit: {WHO} pid={pid} {want}" in lines[0], (args, lines)


def test_queries_are_not_audited(daemon):
    pids = [vsanctl(daemon, *args)[0] for args in (["status"], ["lun", "list"], ["task", "list"])]
    marker, _ = vsanctl(daemon, "lun", "delete", "marker-nope")     # written after the queries
    wait_line(daemon, re.escape(f"pid={marker} "))
    assert all(not audit_lines(daemon, p) for p in pids)


# ---- NBD connections ------------------------------------------------------------------------
def nbdsh(d, export: str, script: str) -> subprocess.Popen:
    """An nbdsh client of ``export``: prints its pid, then runs ``script``."""
    if not shutil.which("nbdsh"):
        pytest.skip("nbdsh is not installed")
    head = "import os, sys\nprint(os.getpid(), flush=True)\n"
    return subprocess.Popen(["nbdsh", "-u", d.uri(export), "-c", head + script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=SYS_ENV)


def closed_line(d, export: str, pid: int) -> str:
    return wait_line(d, rf"vsand.server INFO NBD connection unix pid={pid} uid=\d+ "
                        rf"export {re.escape(export)} closed: ")


def test_client_disconnect_is_logged(daemon):
    vsanctl(daemon, "lun", "create", "n1", "--size", "64M")
    p = nbdsh(daemon, "n1", "h.pread(4096, 0)\nh.shutdown()\n")
    pid = int(p.stdout.readline())
    p.wait(30)
    assert closed_line(daemon, "n1", pid).endswith("closed: client disconnect (NBD_CMD_DISC)")


def test_client_that_vanishes_is_logged(daemon):
    vsanctl(daemon, "lun", "create", "n2", "--size", "64M")
    p = nbdsh(daemon, "n2", "os._exit(0)\n")        # no NBD_CMD_DISC: the socket just closes
    pid = int(p.stdout.readline())
    p.wait(30)
    assert closed_line(daemon, "n2", pid).endswith("closed: client closed the connection without NBD_CMD_DISC")


def test_lun_deleted_under_a_client_is_logged(daemon):
    vsanctl(daemon, "lun", "create", "n3", "--size", "64M")
    p = nbdsh(daemon, "n3", "sys.stdin.readline()\n")
    pid = int(p.stdout.readline())
    try:
        assert vsanctl(daemon, "lun", "delete", "n3", "--force")[1] == 0    # a connected client needs --force
        assert closed_line(daemon, "n3", pid).endswith("closed: LUN n3 deleted")
    finally:
        p.stdin.close()
        p.wait(30)


def handshake(d, export: bytes) -> socket.socket:
    """A raw fixed-newstyle handshake (NBD_OPT_EXPORT_NAME, no zeroes) on the TCP port."""
    s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
    greeting = s.recv(18, socket.MSG_WAITALL)
    assert greeting[:8] == b"NBDMAGIC", greeting
    s.sendall(struct.pack(">I", 3) + b"IHAVEOPT" + struct.pack(">II", 1, len(export)) + export)
    assert len(s.recv(10, socket.MSG_WAITALL)) == 10          # size and transmission flags
    return s


def test_protocol_violation_is_logged(daemon):
    vsanctl(daemon, "lun", "create", "n4", "--size", "64M")
    s = handshake(daemon, b"n4")
    port = s.getsockname()[1]
    s.sendall(b"\xde\xad\xbe\xef" + bytes(24))               # not a request magic
    assert s.recv(1) == b""
    s.close()
    line = wait_line(daemon, rf"NBD connection 127\.0\.0\.1:{port} export n4 closed: ")
    assert "closed: protocol violation: bad request magic 0xdeadbeef" in line, line


def test_daemon_shutdown_is_logged(tmp_path):
    d = Daemon(tmp_path / "state", drives=6, drive_size="256M").start()
    try:
        assert vsanctl(d, "lun", "create", "n5", "--size", "64M")[1] == 0
        s = handshake(d, b"n5")
        port = s.getsockname()[1]
        wait_line(d, r"audit: .* lun\.create name=n5")
        assert d.stop() == 0
        s.close()
    finally:
        d.stop()
    line = wait_line(d, rf"NBD connection 127\.0\.0\.1:{port} export n5 closed: ")
    assert line.endswith("closed: daemon shutdown"), line
