"""vsanctl as a real subprocess against a real daemon: every command in table and
--json form, every error path (one stderr line, exit 1 for the daemon, 2 for usage,
3 when it cannot be reached),
how the daemon is found, and read-only LUNs as NBD clients see them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

VSANCTL = [sys.executable, "-m", "vsand.cli.vsanctl"]
GiB = 1 << 30
MiB = 1 << 20
SYS_PY = "/usr/bin/python3"      # libnbd's Python bindings live in the system Python


# (conftest.py's helpers, repeated: test modules here are not a package, so importing
# "conftest" could pick up another directory's.)
def need(*tools: str) -> None:
    for t in tools:
        if not shutil.which(t):
            pytest.skip(f"{t} is not installed")


def run(cmd, check=True, timeout=60, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} -> {r.returncode}\nstdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}")
    return r


def vsanctl(*args, control=None, rc=0, env=None):
    """Runs vsanctl; checks the exit code and, for errors, the one-line stderr."""
    cmd = VSANCTL + (["--control", control] if control else []) + [str(a) for a in args]
    full_env = dict(os.environ)
    full_env.pop("VSAN_CONTROL", None)
    full_env.update(env or {})
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=full_env)
    assert r.returncode == rc, f"{cmd} -> {r.returncode} (want {rc})\nstdout: {r.stdout}\nstderr: {r.stderr}"
    if rc:
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("vsanctl: "), f"want one error line, got {r.stderr!r}"
        assert r.stdout == "", r.stdout
    else:
        assert r.stderr == "", r.stderr
    return r


def ctl(daemon, *args, rc=0):
    return vsanctl(*args, control=daemon.control, rc=rc)


def js(daemon, *args):
    return json.loads(ctl(daemon, "--json", *args).stdout)


@pytest.fixture(scope="module")
def lun(daemon):
    """A 64 MiB RAID5 LUN the error-path tests may poke but never change."""
    ctl(daemon, "lun", "create", "fixed", "--size", "64M")
    return "fixed"


# ---- commands, table and --json ---------------------------------------------------------
def test_status(daemon):
    st = js(daemon, "status")
    assert st["drives"] == 8 and st["failed_drives"] == 0 and st["pid"] == daemon.proc.pid
    assert 0 < st["free"] <= st["capacity"] <= 8 * GiB
    out = ctl(daemon, "status").stdout
    assert "capacity" in out and "GiB" in out and st["pool"] in out and daemon.sock in out
    assert "8 (all ok)" in out


def test_json_flag_before_or_after_the_command(daemon):
    a = json.loads(ctl(daemon, "--json", "lun", "list").stdout)
    b = json.loads(ctl(daemon, "lun", "list", "--json").stdout)
    assert a == b


def test_lun_create_defaults_to_raid5_thin(daemon):
    out = ctl(daemon, "lun", "create", "c-default", "--size", "4G").stdout
    assert "created LUN c-default" in out and "4 GiB" in out and "RAID5" in out
    info = js(daemon, "lun", "show", "c-default")
    assert (info["size"], info["raid"], info["allocated"]) == (4 * GiB, 5, 0)


@pytest.mark.parametrize("raid", [0, 1, 5])
def test_lun_create_json(daemon, raid):
    info = js(daemon, "lun", "create", f"c-r{raid}", "--size", "512M", "--raid", raid)
    assert (info["name"], info["size"], info["raid"], info["allocated"]) == (f"c-r{raid}", 512 * MiB, raid, 0)


@pytest.mark.parametrize("size,expect", [("4096", None), ("512M", 512 * MiB), ("1G", GiB), ("1T", 1 << 40)])
def test_size_forms(daemon, size, expect):
    """4096 parses (but the pool wants whole MiB, and says so); the suffixed forms all work."""
    if expect is None:
        r = ctl(daemon, "lun", "create", "sz", "--size", size, rc=1)
        assert "size 4 KiB (4096 bytes) is not a multiple of the LUN granularity, 1 MiB " \
               "(the next is 1 MiB)" in r.stderr
        return
    info = js(daemon, "lun", "create", f"sz-{size}", "--size", size)
    assert info["size"] == expect


def test_lun_create_thick(daemon):
    out = ctl(daemon, "lun", "create", "thick", "--size", "256M", "--thick").stdout
    assert "256 MiB (100%)" in out
    info = js(daemon, "lun", "show", "thick")
    assert info["allocated"] == info["size"] == 256 * MiB
    assert "256 MiB (100%)" in ctl(daemon, "lun", "show", "thick").stdout


def test_lun_list(daemon):
    ctl(daemon, "lun", "create", "l-a", "--size", "4G", "--raid", "1")
    ctl(daemon, "lun", "create", "l-b", "--size", "128M", "--raid", "0")
    luns = {i["name"]: i for i in js(daemon, "lun", "list")}
    assert luns["l-a"]["size"] == 4 * GiB and luns["l-a"]["raid"] == 1
    assert luns["l-b"]["size"] == 128 * MiB and luns["l-b"]["raid"] == 0
    lines = ctl(daemon, "lun", "list").stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "SIZE", "ALLOCATED"]
    row = next(ln for ln in lines if ln.startswith("l-a "))
    assert "4 GiB" in row and "RAID1" in row and " rw " in row
    assert "128 MiB" in next(ln for ln in lines if ln.startswith("l-b "))


def test_lun_list_empty(fresh_daemon):
    assert ctl(fresh_daemon, "lun", "list").stdout.strip() == "no LUNs"
    assert js(fresh_daemon, "lun", "list") == []


def test_lun_show(daemon, lun):
    info = js(daemon, "lun", "show", lun)
    assert info["name"] == lun and info["size"] == 64 * MiB and info["connections"] == 0
    out = ctl(daemon, "lun", "show", lun).stdout
    assert "64 MiB (67108864 bytes)" in out and "RAID5" in out and "read-only    no" in out


def test_lun_resize(daemon):
    ctl(daemon, "lun", "create", "grow", "--size", "1G")
    out = ctl(daemon, "lun", "resize", "grow", "2G").stdout
    assert "resized LUN grow to 2 GiB" in out
    r = ctl(daemon, "lun", "resize", "grow", "512M", rc=1)          # issue 13: no silent shrink
    assert "grow is 2 GiB: 512 MiB would discard the last 1.50 GiB (add --allow-shrink)" in r.stderr
    assert js(daemon, "lun", "resize", "grow", "+1G")["size"] == 3 * GiB     # relative
    assert js(daemon, "lun", "resize", "grow", "-1G", "--allow-shrink")["size"] == 2 * GiB
    r = ctl(daemon, "lun", "resize", "grow", "-1G", rc=1)
    assert "(add --allow-shrink)" in r.stderr
    assert js(daemon, "lun", "resize", "grow", "512M", "--allow-shrink")["size"] == 512 * MiB
    assert js(daemon, "lun", "show", "grow")["size"] == 512 * MiB
    r = ctl(daemon, "lun", "resize", "grow", "-1G", "--allow-shrink", rc=1)
    assert "grow is 512 MiB: it cannot shrink by 1 GiB" in r.stderr


def test_shrinking_a_lun_with_a_client_connected_is_refused(daemon):
    """NBD cannot tell a connected client that the size went down: it would write past
    the end. Growing is allowed (clients see it when they reconnect)."""
    need("nbdsh")
    ctl(daemon, "lun", "create", "held", "--size", "1G")
    # a client that holds its connection until told to go (libnbd, system Python)
    script = ("import sys\nsys.stdout.write('connected\\n'); sys.stdout.flush()\nsys.stdin.readline()\n")
    env = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))   # nbdsh runs `python3 -m nbd`
    p = subprocess.Popen(["nbdsh", "-u", daemon.uri("held"), "-c", script], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "connected"
        r = ctl(daemon, "lun", "resize", "held", "-512M", "--allow-shrink", rc=1)
        assert "held has 1 connected client(s)" in r.stderr and "disconnect them first" in r.stderr
        assert js(daemon, "lun", "resize", "held", "+1G")["size"] == 2 * GiB
    finally:
        p.stdin.close()
        p.wait(30)
    assert js(daemon, "lun", "resize", "held", "-512M", "--allow-shrink")["size"] == 1536 * MiB


def test_lun_set(daemon):
    ctl(daemon, "lun", "create", "attrs", "--size", "64M")
    out = ctl(daemon, "lun", "set", "attrs", "--read-only", "on").stdout
    assert "LUN attrs is read-only" in out and "read-only  yes" in out
    assert js(daemon, "lun", "show", "attrs")["read_only"] is True
    row = next(ln for ln in ctl(daemon, "lun", "list").stdout.splitlines() if ln.startswith("attrs "))
    assert " ro " in row
    assert js(daemon, "lun", "set", "attrs", "--read-only", "off")["read_only"] is False


def test_lun_delete(daemon):
    ctl(daemon, "lun", "create", "gone", "--size", "64M")
    ctl(daemon, "lun", "create", "gone2", "--size", "64M")
    assert ctl(daemon, "lun", "delete", "gone").stdout.strip() == "deleted LUN gone"
    assert js(daemon, "lun", "delete", "gone2") == {"deleted": "gone2", "disconnected": 0, "orphaned": []}
    names = {i["name"] for i in js(daemon, "lun", "list")}
    assert not names & {"gone", "gone2"}
    ctl(daemon, "lun", "show", "gone", rc=1)


def test_drive_list(daemon):
    drives = js(daemon, "drive", "list")
    assert [d["index"] for d in drives] == list(range(8))
    assert all(d["size"] == GiB and not d["failed"] and 0 < d["free_psegs"] <= d["psegs"] for d in drives)
    lines = ctl(daemon, "drive", "list").stdout.splitlines()
    assert lines[0].split()[:3] == ["INDEX", "PATH", "SIZE"] and len(lines) == 9
    for d, ln in zip(drives, lines[1:]):
        assert d["path"] in ln and "1 GiB" in ln and "ok" in ln.split()


def test_installed_script(daemon):
    exe = os.path.join(os.path.dirname(sys.executable), "vsanctl")
    if not os.path.exists(exe):
        pytest.skip("vsanctl console script not installed (pip install -e .)")
    r = run([exe, "--control", daemon.control, "--json", "status"])
    assert json.loads(r.stdout)["drives"] == 8


def test_cli_imports_no_storage_code():
    code = ("import sys, vsand.cli.vsanctl as m; m.build_parser(); "
            "print(' '.join(sorted(k for k in sys.modules if k.startswith('vsand'))))")
    mods = set(run([sys.executable, "-c", code]).stdout.split())
    allowed = {"vsand", "vsand.units", "vsand.control", "vsand.control.schema", "vsand.control.client"}
    outside = {m for m in mods if m not in allowed and not m.startswith("vsand.cli.") and m != "vsand.cli"}
    assert not outside, outside     # the CLI's own modules, the schema and the client: nothing else


# ---- errors -------------------------------------------------------------------------------
DAEMON_ERRORS = [
    (["lun", "show", "nope"], "vsanctl: lun show: no logical disk named 'nope'"),
    (["lun", "resize", "nope", "1G"], "vsanctl: lun resize: no logical disk named 'nope'"),
    (["lun", "delete", "nope"], "vsanctl: lun delete: no logical disk named 'nope'"),
    (["snapshot", "delete", "fixed"], "vsanctl: snapshot delete: fixed is a LUN, not a snapshot; "
                                      "`vsanctl lun delete fixed` deletes it"),
    (["lun", "set", "nope", "--read-only", "on"], "vsanctl: lun set: no logical disk named 'nope'"),
    (["lun", "create", "fixed", "--size", "1G"], "vsanctl: lun create: logical disk 'fixed' exists"),
    (["lun", "create", "new", "--size", "1000000"], "(1000000 bytes) is not a multiple of the LUN granularity, 1 MiB"),
    (["lun", "create", "new", "--size", "1.5M"], "size 1.50 MiB (1572864 bytes) is not a multiple of the LUN "
                                                  "granularity, 1 MiB (the next is 2 MiB)"),
    (["lun", "resize", "fixed", "4097"], "vsanctl: lun resize: size 4.00 KiB (4097 bytes) is not a multiple "
                                         "of the LUN granularity, 1 MiB (the next is 1 MiB)"),
    (["lun", "create", "big", "--size", "1P"], "exceeds the per-LD limit"),
    (["lun", "create", "a/b", "--size", "1G"], "bad LD name"),
]

USAGE_ERRORS = [
    (["lun", "create", "new", "--size", "0"], "vsanctl: lun create: argument --size: size must be positive"),
    (["lun", "create", "new", "--size=-4G"], "size must be positive"),
    (["lun", "create", "new", "--size", "12X"], "not a size: '12X'"),
    (["lun", "create", "new", "--size", "infG"], "not a size: 'infG'"),
    (["lun", "create", "new", "--size", "1e30T"], "too large"),
    (["lun", "create", "new"], "the following arguments are required: --size"),
    (["lun", "create", "new", "--size", "1G", "--raid", "3"], "argument --raid: invalid choice: 3"),
    (["lun", "create", "new", "--size", "1G", "--raid", "x"], "argument --raid: invalid int value"),
    (["lun", "resize", "fixed", "0"], "vsanctl: lun resize: argument SIZE: size must be positive"),
    (["lun", "resize", "fixed", "12X"], "not a size: '12X'"),
    (["lun", "resize", "fixed"], "required: SIZE"),
    (["lun", "set", "fixed"], "vsanctl: lun set: nothing to set (use --read-only on|off, --protect on|off, "
                               "--allow-cert, --readonly-for)"),
    (["lun", "set", "fixed", "--read-only", "maybe"], "expected on or off, not 'maybe'"),
    (["lun", "show"], "required: NAME"),
    (["lun", "frobnicate"], "invalid choice: 'frobnicate'"),
    (["lun"], "vsanctl: lun: the following arguments are required: COMMAND"),
    ([], "vsanctl: the following arguments are required: COMMAND"),
    (["drive", "list", "--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
@pytest.mark.parametrize("args,msg", DAEMON_ERRORS, ids=[" ".join(a) for a, _ in DAEMON_ERRORS])
def test_daemon_errors(daemon, lun, args, msg, as_json):
    r = ctl(daemon, *(["--json"] if as_json else []), *args, rc=1)
    assert msg in r.stderr
    assert js(daemon, "lun", "show", lun)["size"] == 64 * MiB    # nothing changed


@pytest.mark.parametrize("args,msg", USAGE_ERRORS, ids=[" ".join(a) or "(none)" for a, _ in USAGE_ERRORS])
def test_usage_errors(daemon, lun, args, msg):
    r = ctl(daemon, *args, rc=2)
    assert msg in r.stderr


def test_usage_errors_need_no_daemon(tmp_path):
    r = vsanctl("lun", "create", "x", "--size", "12X", control=str(tmp_path / "none.sock"), rc=2)
    assert "not a size" in r.stderr


def test_daemon_not_running(tmp_path):
    missing = str(tmp_path / "nope" / "control.sock")
    for args in (["status"], ["--json", "lun", "list"], ["lun", "create", "x", "--size", "1G"], ["drive", "list"]):
        r = vsanctl(*args, control=missing, rc=3)
        assert f"cannot reach the vsand daemon at {missing}" in r.stderr and "is vsand running?" in r.stderr
    # a stale socket left by a dead daemon: connection refused
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()
    r = vsanctl("status", control=stale, rc=3)
    assert "cannot reach" in r.stderr and "is vsand running?" in r.stderr


def test_vsan_control_env(daemon, tmp_path):
    st = json.loads(vsanctl("--json", "status", env={"VSAN_CONTROL": daemon.control}).stdout)
    assert st["pid"] == daemon.proc.pid
    missing = str(tmp_path / "env.sock")
    r = vsanctl("status", env={"VSAN_CONTROL": missing}, rc=3)
    assert missing in r.stderr
    # --control wins over the environment
    vsanctl("status", control=daemon.control, env={"VSAN_CONTROL": missing})


def test_default_control_path(tmp_path):
    if os.path.exists("/var/lib/vsand/control.sock"):
        pytest.skip("a vsand daemon is installed at the default path")
    r = vsanctl("status", rc=3)
    assert "/var/lib/vsand/control.sock" in r.stderr


# ---- read-only as NBD clients see it ------------------------------------------------------
def qemu_io(uri, cmd, *flags, check=True):
    return run(["qemu-io", "-f", "raw", *flags, "-c", cmd, uri], check=check, timeout=60)


def nbdinfo_ro(uri) -> bool:
    return json.loads(run(["nbdinfo", "--json", uri], timeout=60).stdout)["exports"][0]["is_read_only"]


def test_read_only_lun_refuses_nbd_writes(daemon):
    need("qemu-io", "nbdinfo")
    ctl(daemon, "lun", "create", "ro", "--size", "64M")
    uri = daemon.uri("ro")
    qemu_io(uri, "write -P 0xab 0 64k")
    assert nbdinfo_ro(uri) is False

    ctl(daemon, "lun", "set", "ro", "--read-only", "on")
    assert nbdinfo_ro(uri) is True
    r = qemu_io(uri, "write -P 0xcd 0 4k", check=False)
    assert r.returncode != 0 and "permission denied" in (r.stdout + r.stderr).lower(), r
    # a client that ignores the read-only flag is refused by the server itself
    if shutil.which("nbdsh") and run([SYS_PY, "-c", "import nbd"], check=False).returncode == 0:
        env = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))   # nbdsh runs `python3 -m nbd`
        script = ("h.set_strict_mode(0)\n"
                  "try:\n    h.pwrite(b'\\xcd' * 4096, 0)\nexcept nbd.Error as e:\n    print('ERR', e.errno)\n"
                  "else:\n    print('WROTE')\n")
        r = run(["nbdsh", "-u", uri, "-c", script], env=env, timeout=60)
        assert r.stdout.split() == ["ERR", "EPERM"], r.stdout
    qemu_io(uri, "read -P 0xab 0 64k", "-r")       # the data is unchanged
    qemu_io(uri, "read -P 0 64k 64k", "-r")

    ctl(daemon, "lun", "set", "ro", "--read-only", "off")
    assert nbdinfo_ro(uri) is False
    qemu_io(uri, "write -P 0xcd 0 4k")
    qemu_io(uri, "read -P 0xcd 0 4k", "-r")


def test_a_raid_type_the_drives_cannot_hold_is_refused_at_create(tmp_path):
    """Issue 13: on 4 drives `lun create --raid 5` used to succeed, and every write
    then failed with ENOSPC and nothing in the log."""
    from daemonkit import Daemon
    d = Daemon(tmp_path / "state", drives=4, drive_size="256M").start()
    try:
        r = ctl(d, "lun", "create", "r5", "--size", "64M", rc=1)
        assert "RAID5 needs 5 working drives in one RSS; LDAD 'default' has 4" in r.stderr
        r = ctl(d, "lun", "create", "r1", "--size", "64M", "--raid", "1", rc=1)
        assert "RAID1 needs 4 pairs of working drives in one RSS" in r.stderr
        assert js(d, "lun", "create", "r0", "--size", "64M", "--raid", "0")["raid"] == 0
        assert [x["name"] for x in js(d, "lun", "list")] == ["r0"]
    finally:
        d.stop()
