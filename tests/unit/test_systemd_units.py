import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_units_verify(tmp_path):
    vsand = shutil.which("vsand", path=os.path.dirname(sys.executable)) or sys.executable
    for unit in ("vsand.service", "vsand.socket"):
        text = open(os.path.join(ROOT, "systemd", unit)).read()
        (tmp_path / unit).write_text(text.replace("/usr/local/bin/vsand", vsand))
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "vsand.service"),
                        str(tmp_path / "vsand.socket")], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_example_config_loads():
    from vsand.config import load
    cfg = load(["--config", os.path.join(ROOT, "systemd", "vsand.toml")])
    assert cfg.state_dir == "/var/lib/vsand" and cfg.drives == 8 and cfg.drive_size == 4 << 30
    assert cfg.tcp() == ("127.0.0.1", 10809)


def test_example_config_tls_lines_load(tmp_path):
    """The commented TLS example lines, once uncommented, are valid settings."""
    from vsand.config import load
    text = open(os.path.join(ROOT, "systemd", "vsand.toml")).read()
    lines = [line[2:] if line.startswith("# tls") else line for line in text.splitlines()]
    assert sum(line.startswith("tls") for line in lines) == 5
    (tmp_path / "vsand.toml").write_text("\n".join(lines) + "\n")
    cfg = load(["--config", str(tmp_path / "vsand.toml")])
    assert (cfg.tls, cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.tls_verify_peer) == (
        "require", "/etc/vsand/tls/server-cert.pem", "/etc/vsand/tls/server-key.pem",
        "/etc/vsand/tls/ca-cert.pem", True)


def test_example_config_metrics_line_is_one_and_loads(tmp_path):
    """One commented metrics example (two would be a duplicate key once both are
    uncommented), valid when uncommented."""
    from vsand.config import load
    text = open(os.path.join(ROOT, "systemd", "vsand.toml")).read()
    lines = [line[2:] if line.startswith("# metrics =") else line for line in text.splitlines()]
    assert sum(line.startswith("metrics =") for line in lines) == 1
    (tmp_path / "vsand.toml").write_text("\n".join(lines) + "\n")
    assert load(["--config", str(tmp_path / "vsand.toml")]).metrics_addr() == ("127.0.0.1", 9187)


def test_example_config_rados_lines_load(tmp_path):
    """The commented RADOS example (backend, standby and the [rados] table), once
    uncommented, is a valid setting of every RADOS key."""
    from vsand.config import load
    text = open(os.path.join(ROOT, "systemd", "vsand.toml")).read()
    keys = ("# backend", "# standby", "# [rados]", "# conf", "# pool", "# namespace", "# user",
            "# timeout", "# heartbeat", "# peer", "# takeover_after")
    lines = [line[2:] if line.startswith(keys) else line for line in text.splitlines()]
    assert sum(line.startswith(tuple(k[2:] for k in keys)) for line in lines) == len(keys)
    (tmp_path / "vsand.toml").write_text("\n".join(lines) + "\n")
    cfg = load(["--config", str(tmp_path / "vsand.toml")])
    assert (cfg.backend, cfg.standby, cfg.rados_conf, cfg.rados_pool, cfg.rados_user) == (
        "rados", True, "/etc/ceph/ceph.conf", "vsand", "client.admin")
    assert cfg.rados_timeout == 30 and cfg.takeover_after == 3.0
    assert cfg.heartbeat_addr() == ("192.0.2.10", 7810) and cfg.peer_addr() == ("192.0.2.11", 7810)
