"""The control plane against failure and abuse (issue 13 item 6).

vsanctl: every way a request can fail is one stderr line and its own exit status
(vsanctl.py EXIT_STATUS), shown with a real daemon killed mid-request and with
misbehaving fake servers. The daemon: requests longer than any request needs are
refused from their length alone, partial requests time out, control connections
are capped, and the daemon keeps answering through all of it."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import msgpack
import pytest

from daemonkit import Daemon

VSANCTL = [sys.executable, "-m", "vsand.cli.vsanctl"]
MiB = 1 << 20
FRAME = struct.Struct(">I")
REFUSED, UNREACHABLE, DENIED, LOST, PROTOCOL, TIMEOUT = 1, 3, 4, 5, 6, 7


def vsanctl(control, *args, rc, timeout=60, **kw):
    r = subprocess.run(VSANCTL + ["--control", str(control), *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, **kw)
    lines = r.stderr.splitlines()
    assert r.returncode == rc, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("vsanctl: "), f"want one error line, got {r.stderr!r}"
    assert "Traceback" not in r.stderr and r.stdout == ""
    return lines[0]


# ---- vsanctl against a misbehaving server ----------------------------------------------------
class FakeServer:
    """Accepts one connection on a UNIX socket, reads the request's first bytes, then
    does ``act(conn)``."""

    def __init__(self, path, act):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.act = act
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            self.act(conn)

    def close(self):
        self.sock.close()


def hold(conn):
    conn.recv(1)         # until the client gives up


CASES = {
    "closed mid-request": (lambda c: None, LOST, "closed the control connection mid-request"),
    "reset": (lambda c: c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
              LOST, "mid-request"),
    "truncated frame": (lambda c: c.sendall(FRAME.pack(100) + b"\x81\xa2ok"), LOST, "mid-request"),
    "half a header": (lambda c: c.sendall(b"\x00\x00"), LOST, "mid-request"),
    "garbage": (lambda c: c.sendall(FRAME.pack(5) + b"\xc1\xc1\xc1\xc1\xc1"), PROTOCOL, "malformed reply"),
    "not a map": (lambda c: c.sendall(FRAME.pack(1) + msgpack.packb(7)), PROTOCOL, "malformed reply"),
    "oversized length": (lambda c: (c.sendall(FRAME.pack(0xFFFFFFF0)), hold(c)), PROTOCOL, "4294967280 bytes"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_vsanctl_one_line_per_server_failure(tmp_path, case):
    act, rc, msg = CASES[case]
    srv = FakeServer(tmp_path / "ctl.sock", act)
    try:
        line = vsanctl(tmp_path / "ctl.sock", "lun", "list", rc=rc, timeout=20)
    finally:
        srv.close()
    assert msg in line, line


def test_vsanctl_times_out_on_a_silent_server(tmp_path):
    srv = FakeServer(tmp_path / "ctl.sock", hold)
    t0 = time.monotonic()
    try:
        line = vsanctl(tmp_path / "ctl.sock", "--timeout", "1", "status", rc=TIMEOUT, timeout=20)
    finally:
        srv.close()
    assert "no reply from the daemon within 1 s" in line and time.monotonic() - t0 < 10, line


def test_vsanctl_unreachable_and_denied(tmp_path):
    line = vsanctl(tmp_path / "none.sock", "status", rc=UNREACHABLE)
    assert "no control socket" in line
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))           # bound, nobody listening
    line = vsanctl(tmp_path / "stale.sock", "status", rc=UNREACHABLE)
    assert "refused" in line
    if os.geteuid() == 0:
        # root passes every permission check: ask as nobody, like a user without sudo
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = tmp_path / "root.sock"
        srv.bind(str(path))
        srv.listen(1)
        os.chmod(path, 0o600)
        os.chmod(tmp_path, 0o755)
        rc, err = as_nobody(["--control", str(path), "status"])
        assert rc == DENIED and err.count("\n") == 1 and "permission denied" in err, (rc, err)


def as_nobody(argv) -> tuple[int, str]:
    """vsanctl's main() in a forked child that dropped root (the interpreter, under
    /root, could not be started as nobody): its exit status and stderr."""
    from vsand.cli.vsanctl import main
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:        # the child: never returns into pytest
        try:
            sys.stderr = os.fdopen(w, "w")       # pytest's capture replaced sys.stderr
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            code = main(argv)
            sys.stderr.flush()
        finally:
            os._exit(locals().get("code", 99))
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err


# ---- a real daemon killed mid-request --------------------------------------------------------
def backlog(path) -> int:
    """Connections waiting in the listening socket's queue (not yet accepted)."""
    out = subprocess.run(["ss", "-xlH", "src", str(path)], capture_output=True, text=True).stdout
    return sum(int(line.split()[2]) for line in out.splitlines() if line.split())


def test_vsanctl_when_the_daemon_is_killed_mid_request(tmp_path):
    d = Daemon(tmp_path / "state", drives=6, drive_size="256M").start()
    try:
        os.kill(d.proc.pid, signal.SIGSTOP)      # the request waits unanswered ...
        p = subprocess.Popen(VSANCTL + ["--control", d.control, "lun", "list"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while backlog(d.control) < 1:
            assert time.monotonic() < deadline and p.poll() is None, "vsanctl never connected"
            time.sleep(0.02)
        d.proc.kill()                            # ... and the daemon dies under it
        os.kill(d.proc.pid, signal.SIGCONT)
        d.proc.wait()
        out, err = p.communicate(timeout=30)
    finally:
        d.stop()
    assert p.returncode == LOST, (p.returncode, err)
    assert err.count("\n") == 1 and err.startswith("vsanctl: lun list: ") and "Traceback" not in err, err
    assert out == ""


# ---- the daemon against abusive clients -------------------------------------------------------
@pytest.fixture
def short_daemon(tmp_path):
    d = Daemon(tmp_path / "state", drives=6, drive_size="256M",
               extra=["--control-timeout", "2s", "--control-max-connections", "300"]).start()
    yield d
    assert d.stop() == 0, d.read_log()
    assert "Traceback" not in open(d.log).read()


def connect(path) -> socket.socket:
    """A connection, once the listen queue has room (200 at once overflow it)."""
    deadline = time.monotonic() + 30
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            assert time.monotonic() < deadline, "the daemon stopped accepting"
            time.sleep(0.01)


def rss(pid) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def read_reply(s) -> dict | None:
    """One reply frame, or None at EOF."""
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    if not buf:
        return None
    (n,) = FRAME.unpack(buf[:4])
    assert len(buf) == 4 + n, buf
    return msgpack.unpackb(buf[4:])


def flood(d, payload, n: int = 200) -> list[socket.socket]:
    """``n`` control connections, connection i having sent ``payload(i)``."""
    socks = []
    for i in range(n):
        s = connect(d.control)
        s.sendall(payload(i))
        socks.append(s)
    return socks


def test_oversized_requests_are_refused_at_once(short_daemon):
    d = short_daemon
    before = rss(d.proc.pid)
    socks = flood(d, lambda i: FRAME.pack(16 * MiB) + b"\x00" * 65536)     # 16 MiB promised, 64 KiB sent
    t0 = time.monotonic()
    for s in socks:
        r = read_reply(s)
        assert r and not r["ok"] and "longer than" in r["error"], r
        s.close()
    assert time.monotonic() - t0 < 1.5, "refusals waited for the timeout"   # the timeout is 2 s
    assert rss(d.proc.pid) - before < 64 * MiB, (before, rss(d.proc.pid))
    assert d.ctl("status")["state"]


def test_partial_requests_time_out(short_daemon):
    d = short_daemon
    before = rss(d.proc.pid)
    # nothing, a header cut short, or a 1 MiB body (the most a request may be) of which 64 KiB came
    socks = flood(d, lambda i: [b"", b"\x00\x00", FRAME.pack(MiB) + b"\x00" * 65536][i % 3])
    assert d.ctl("status")["state"]             # answered while they hang
    t0 = time.monotonic()
    for s in socks:
        assert s.recv(1) == b""                 # closed by the daemon, no reply
        s.close()
    waited = time.monotonic() - t0
    assert waited < 10, waited
    assert rss(d.proc.pid) - before < 64 * MiB, (before, rss(d.proc.pid))
    assert "sent no whole request within 2 s" in open(d.log).read()
    assert d.ctl("status")["state"]


def test_control_connections_are_capped(tmp_path):
    d = Daemon(tmp_path / "state", drives=6, drive_size="256M",
               extra=["--control-max-connections", "4"]).start()
    try:
        idle = []
        for _ in range(4):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(d.control)
            idle.append(s)
        line = vsanctl(d.control, "status", rc=REFUSED)
        assert "at most 4 control connections" in line, line
        for s in idle:
            s.close()
        deadline = time.monotonic() + 30
        while True:                  # the daemon sees the closes at its own pace
            r = subprocess.run(VSANCTL + ["--control", d.control, "status"], capture_output=True, text=True)
            if r.returncode == 0 or time.monotonic() > deadline:
                break
        assert r.returncode == 0, r.stderr
    finally:
        assert d.stop() == 0


def test_task_wait_when_the_daemon_is_killed(tmp_path):
    """`task wait` polls: the daemon killed between or during its calls ends it with
    one line (lost mid-request, or no longer reachable), never a traceback."""
    d = Daemon(tmp_path / "state", drives=6, drive_size="256M").start()
    try:
        d.ctl("lun.create", name="src", size=64 * MiB, thick=True)
        tid = d.ctl("snapclone.create", source="src", name="cl", rate=1)["task"]     # ~1 min
        p = subprocess.Popen(VSANCTL + ["--control", d.control, "task", "wait", str(tid)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline().startswith(f"task {tid} bgcopy cl: ")     # following it
        d.proc.kill()
        d.proc.wait()
        out, err = p.communicate(timeout=30)
    finally:
        d.stop()
    assert p.returncode in (LOST, UNREACHABLE), (p.returncode, err)
    assert err.count("\n") == 1 and err.startswith("vsanctl: ") and "Traceback" not in err, err
