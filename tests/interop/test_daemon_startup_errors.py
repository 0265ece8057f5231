"""A start that cannot serve (issue 13): real `python -m vsand` processes exit
nonzero with ONE line on stderr, before anything is created: no pool in a fresh
state directory, no socket file left behind, an existing pool untouched."""

from __future__ import annotations

import os
import socket

import pytest
from daemonkit import ROOT, VSAND, Daemon, run


def start(*args, timeout=60):
    return run(VSAND + [str(a) for a in args], check=False, cwd=ROOT, timeout=timeout)


def one_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture
def held_port():
    """A TCP port on 127.0.0.1 that someone else listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def small(state, *extra):
    return ["--state-dir", state, "--drives", 4, "--drive-size", "256M", *extra]


@pytest.mark.parametrize("exists", [True, False], ids=["empty-dir", "no-dir"])
def test_port_in_use_creates_nothing(tmp_path, held_port, exists):
    state = tmp_path / "state"
    if exists:
        state.mkdir()
    r = start(*small(state, "--listen", f"127.0.0.1:{held_port}"))
    assert r.returncode == 1
    line = one_line(r)
    assert f"cannot start: cannot listen on 127.0.0.1:{held_port}: address already in use" in line
    if exists:
        assert os.listdir(state) == []           # no pool, no lock file, no socket
    else:
        assert not state.exists()


def test_port_in_use_leaves_an_existing_pool_and_no_sockets(tmp_path, held_port):
    d = Daemon(tmp_path / "state", drives=4, drive_size="256M").start()
    d.ctl("lun.create", name="keep", size=64 << 20, raid=0)
    assert d.stop() == 0
    before = sorted(os.listdir(d.state_dir))
    r = start(*small(d.state_dir, "--listen", f"127.0.0.1:{held_port}"))
    assert r.returncode == 1 and "address already in use" in one_line(r)
    assert sorted(os.listdir(d.state_dir)) == before
    assert not os.path.exists(d.sock) and not os.path.exists(d.control)
    d.start()                                   # the pool is as it was
    try:
        assert [x["name"] for x in d.ctl("lun.list")] == ["keep"]
        # and the sockets bound before the pool opened are the ones served
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
            assert s.recv(8) == b"NBDMAGIC"
        assert oct(os.stat(d.control).st_mode & 0o777) == "0o600"
        assert oct(os.stat(d.sock).st_mode & 0o777) == "0o660"
    finally:
        assert d.stop() == 0
    assert not os.path.exists(d.sock) and not os.path.exists(d.control)


def test_an_unusable_socket_path_takes_back_what_the_start_made(tmp_path):
    state = tmp_path / "state"
    bad = tmp_path / "missing" / "nbd.sock"
    r = start(*small(state, "--listen", "none", "--nbd-socket", bad))
    assert r.returncode == 1
    assert f"cannot start: cannot listen on {bad}: No such file or directory" in one_line(r)
    assert not state.exists()
    (tmp_path / "file").write_text("")              # nor a state directory it cannot make
    r = start(*small(tmp_path / "file" / "state", "--listen", "none"))
    assert r.returncode == 1 and "cannot start: Not a directory" in one_line(r)


CONFIGS = [
    ("drives = \n", "not valid TOML"),
    ("drivez = 3\n", "unknown keys ['drivez']"),
    ('listen = "localhost"\n', "listen: expected HOST:PORT"),
    ('listen = "127.0.0.1:99999"\n', "listen: expected HOST:PORT"),
    ('log_level = "loud"\n', "log_level: expected one of debug, info, warning, error, not 'loud'"),
    ("drives = 0\n", "drives: must be at least 1"),
    ('drives = "many"\n', "drives: not a whole number: 'many'"),
    ("state_dir = 5\n", "state_dir: expected a string, not 5"),
    ('drive_paths = "/dev/sdb"\n', "drive_paths: expected a list of paths"),
    ('drive_size = "huge"\n', "drive_size: not a size: 'huge'"),
    ("[tasks]\nrate_mib = -1\n", "tasks.rate_mib: must be >= 0 MiB/s"),
    ('backend = "ceph"\n', "backend: expected one of files, rados, not 'ceph'"),
    ('backend = "rados"\n', "backend rados needs the cluster's ceph.conf and a pool"),
    ("standby = true\n", "--standby needs backend rados"),
    ('[rados]\ntakeover_after = 0\n', "rados.takeover_after: expected seconds (0 < s < 3600), not 0"),
    ('[rados]\nheartbeat = "nowhere"\n', "rados.heartbeat: expected HOST:PORT"),
    ('[rados]\nwatch = 1\n', "unknown keys ['rados.watch']"),
]


@pytest.mark.parametrize("text,says", CONFIGS, ids=[t.split("=")[0].strip() for t, _ in CONFIGS])
def test_bad_config(tmp_path, text, says):
    state = tmp_path / "state"
    cfg = tmp_path / "vsand.toml"
    cfg.write_text(f'state_dir = "{state}"\n' + text if not text.startswith(("state_dir", "[")) else text)
    r = start("--config", cfg, "--state-dir", state)
    assert r.returncode == 2
    line = one_line(r)
    assert line.startswith("vsand: ") and says in line, line
    assert not state.exists()


def test_unreadable_config(tmp_path):
    r = start("--config", tmp_path / "none.toml", "--state-dir", tmp_path / "state")
    assert r.returncode == 2
    assert f"vsand: cannot read the config file {tmp_path / 'none.toml'}: No such file or directory" \
        in one_line(r)
    r = start("--config", tmp_path, "--state-dir", tmp_path / "state")
    assert r.returncode == 2 and "Is a directory" in one_line(r)
    assert not (tmp_path / "state").exists()


def test_bad_flags_are_one_line(tmp_path):
    for args, says in ((["--drives", "x"], "argument --drives: not a whole number: 'x'"),
                       (["--listen", "nowhere"], "argument --listen: expected HOST:PORT"),
                       (["--bogus"], "unrecognized arguments: --bogus")):
        r = start("--state-dir", tmp_path / "state", *args)
        assert r.returncode == 2 and says in one_line(r), r.stderr
    assert not (tmp_path / "state").exists()


def test_rados_backend_that_cannot_connect_is_one_line(tmp_path):
    """A ceph.conf that does not exist: exit 1 with the reason, nothing left behind."""
    state = tmp_path / "state"
    r = start(*small(state, "--backend", "rados", "--rados-conf", tmp_path / "no.conf",
                     "--rados-pool", "psegs", "--listen", "none"))
    assert r.returncode == 1
    line = one_line(r)
    assert "cannot start: RADOS pool 'psegs'" in line and "no.conf" in line, line
    assert not state.exists()


def test_standby_needs_a_heartbeat_address(tmp_path):
    r = start(*small(tmp_path / "state", "--backend", "rados", "--rados-conf", "x.conf",
                     "--rados-pool", "p", "--standby"))
    assert r.returncode == 2 and "--standby needs rados.heartbeat" in one_line(r), r.stderr
    assert not (tmp_path / "state").exists()
