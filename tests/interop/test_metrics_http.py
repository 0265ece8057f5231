"""Prometheus metrics on the daemon's HTTP listener (issue 14): a REAL daemon
scraped over HTTP while fio works a LUN over NBD, the counters checked against
what fio's JSON says it did; the flag and config key, a taken port, and metrics
off unless configured."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemonkit import Daemon, free_port, healthy, run
from test_clients_fio import need_fio_nbd
from test_daemon_startup_errors import one_line, start
from test_nbd_bad_input import Conn
from vsand.nbd import constants as C

MiB = 1 << 20
SIZE = 32 * MiB


def scrape(port: int) -> dict:
    """(sample name, sorted label pairs) -> value, from one GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def lun(m: dict, name: str, lun_name: str, **labels) -> float:
    return m[name, tuple(sorted({"lun": lun_name, **labels}.items()))]


def metrics_daemon(tmp_path, *extra) -> tuple[Daemon, int]:
    port = free_port()
    d = Daemon(tmp_path / "state", drives=4, drive_size="256M",
               extra=["--metrics", f"127.0.0.1:{port}", *extra])
    return d.start(), port


def test_counters_follow_fio(tmp_path):
    need_fio_nbd()
    d, port = metrics_daemon(tmp_path)
    try:
        d.ctl("lun.create", name="m", size=SIZE, raid=0)
        d.ctl("lun.create", name="quiet", size=SIZE, raid=0)
        before = scrape(port)
        assert lun(before, "vsand_lun_requests_total", "m", op="read") == 0
        cmd = ["fio", "--name=m", "--ioengine=nbd", f"--uri={d.uri('m')}", "--rw=randrw",
               "--bsrange=4k-64k", f"--size={SIZE}", "--iodepth=8", "--fsync=8",
               "--io_size=96M", "--randseed=14", "--output-format=json"]
        fio = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # scrapes while fio runs: the counters only go up
        during, last = 0, before
        while fio.poll() is None:
            m = scrape(port)
            for key in [k for k in m if k[0] == "vsand_lun_requests_total"]:
                assert m[key] >= last.get(key, 0), key
            last = m
            during += fio.poll() is None
        out, err = fio.communicate(timeout=120)
        assert fio.returncode == 0, err[-3000:]
        assert during >= 1, "fio ended before a scrape (raise --io_size)"
        job = json.loads(out[out.index("{"):])["jobs"][0]
        after = scrape(port)
        # what fio did is what the LUN counted: requests are fio's ios one for one
        for side, op in (("read", "read"), ("write", "write")):
            assert lun(after, "vsand_lun_requests_total", "m", op=op) == job[side]["total_ios"] > 0
            assert lun(after, "vsand_lun_request_bytes_total", "m", op=op) == job[side]["io_bytes"]
            assert lun(after, "vsand_lun_request_duration_seconds_count", "m", op=op) == job[side]["total_ios"]
            assert lun(after, "vsand_lun_request_duration_seconds_bucket", "m", op=op, le="+Inf") \
                == job[side]["total_ios"]
            assert lun(after, "vsand_lun_request_duration_seconds_sum", "m", op=op) > 0
        flushes = lun(after, "vsand_lun_requests_total", "m", op="flush")
        assert flushes >= job["sync"]["total_ios"] > 0
        assert lun(after, "vsand_lun_request_duration_seconds_count", "m", op="flush") == flushes
        assert after["vsand_commit_duration_seconds_count", ()] >= 1
        assert after["vsand_commit_failures_total", ()] == 0
        assert not [k for k in after if k[0] == "vsand_lun_errors_total"]
        assert lun(after, "vsand_lun_connections_opened_total", "m") >= 1
        # the other LUN saw nothing
        assert lun(after, "vsand_lun_requests_total", "quiet", op="write") == 0
        assert lun(after, "vsand_lun_connections_opened_total", "quiet") == 0
        written = lun(after, "vsand_lun_allocated_bytes", "m")
        assert 0 < written <= SIZE
        assert lun(after, "vsand_lun_size_bytes", "m", kind="lun") == SIZE

        # a snapshot shows in the counts by kind and shares m's space
        d.ctl("snapshot.create", source="m", name="m-s1")
        m = scrape(port)
        assert m["vsand_logical_disks", (("kind", "snapshot"),)] == 1
        assert m["vsand_logical_disks", (("kind", "lun"),)] == 2
        assert lun(m, "vsand_lun_shared_bytes", "m-s1") == written
        assert m["vsand_logical_disk_allocated_bytes", (("kind", "lun"),)] == written   # quiet: 0
        assert m["vsand_logical_disk_exclusive_bytes", (("kind", "snapshot"),)] == 0     # all shared
        # pool and drives
        drives = {dict(k[1])["drive"] for k in m if k[0] == "vsand_drive_capacity_bytes"}
        assert drives == {"0", "1", "2", "3"}
        assert sum(v for k, v in m.items() if k[0] == "vsand_drive_capacity_bytes") \
            == m["vsand_pool_capacity_bytes", ()]
        assert m["vsand_pool_degraded", ()] == 0
        assert m["vsand_metadata_commits_total", ()] >= 1
        assert m["vsand_event_loop_lag_seconds_count", ()] >= 1
        # fio's connection is closed: none open any more (the close may lag the reply)
        deadline = time.monotonic() + 10
        while lun(m, "vsand_lun_connections", "m") and time.monotonic() < deadline:
            m = scrape(port)
        assert lun(m, "vsand_lun_connections", "m") == 0
        healthy(d)
    finally:
        assert d.stop() == 0, d.read_log()


def test_rename_delete_and_a_snapclone_task(tmp_path):
    need_fio_nbd()
    d, port = metrics_daemon(tmp_path)
    try:
        d.ctl("lun.create", name="a", size=8 * MiB, raid=0)
        run(["fio", "--name=a", "--ioengine=nbd", f"--uri={d.uri('a')}", "--rw=write", "--bs=1m",
             f"--size={8 * MiB}"])
        assert lun(scrape(port), "vsand_lun_requests_total", "a", op="write") == 8
        d.ctl("lun.rename", name="a", new_name="b")
        m = scrape(port)
        assert lun(m, "vsand_lun_requests_total", "b", op="write") == 8
        assert not [k for k in m if ("lun", "a") in k[1]]
        # a snapclone: its BGCOPY task shows until done, then counts as done
        d.ctl("snapclone.create", source="b", name="c")
        deadline = time.monotonic() + 30
        while True:
            m = scrape(port)
            for k, v in m.items():
                if k[0] == "vsand_task_progress_ratio":
                    assert dict(k[1])["kind"] == "bgcopy" and dict(k[1])["target"] == "c"
                    assert 0 <= v <= 1
            if m.get(("vsand_tasks", (("state", "done"),))) == 1 or time.monotonic() > deadline:
                break
        assert m["vsand_tasks", (("state", "done"),)] == 1
        assert m["vsand_logical_disks", (("kind", "snapclone"),)] == 1
        assert not [k for k in m if k[0] == "vsand_task_progress_ratio"]    # only active tasks
        d.ctl("lun.delete", name="c")
        d.ctl("lun.delete", name="b")
        d.ctl("lun.create", name="b", size=8 * MiB, raid=0)
        assert lun(scrape(port), "vsand_lun_requests_total", "b", op="write") == 0
    finally:
        assert d.stop() == 0, d.read_log()


def test_errors_trims_zeroes_and_fua_are_counted(tmp_path):
    """A raw NBD client: requests the protocol refuses count as errors by errno (and
    not as requests); TRIM, WRITE_ZEROES, FUA WRITEs and a READ streamed in pieces
    count with their bytes."""
    d, port = metrics_daemon(tmp_path)
    try:
        d.ctl("lun.create", name="e", size=8 * MiB, raid=0)
        c = Conn(d, "unix").negotiate(name="e")
        for cmd, off, n, payload, want in ((C.CMD_READ, 8 * MiB, 4096, b"", C.EINVAL),
                                           (C.CMD_READ, 8 * MiB - 1, 2, b"", C.EINVAL),
                                           (C.CMD_WRITE, 8 * MiB - 100, 512, b"W" * 512, C.ENOSPC)):
            assert c.reply_errno(c.request(cmd, off, n, 0, payload)) == want
        c.write(0, b"x" * 8192, flags=C.CMD_FLAG_FUA)          # answered after a commit
        assert c.reply_errno(c.request(C.CMD_TRIM, 0, 4096)) == 0
        assert c.reply_errno(c.request(C.CMD_WRITE_ZEROES, MiB, 3 * MiB)) == 0
        assert c.read(0, 2 * MiB)[:8192] == b"\0" * 4096 + b"x" * 4096   # over 1 MiB: streamed
        c.close()
        m = scrape(port)
        assert lun(m, "vsand_lun_errors_total", "e", errno="EINVAL") == 2
        assert lun(m, "vsand_lun_errors_total", "e", errno="ENOSPC") == 1
        for op, n, nbytes in (("write", 1, 8192), ("trim", 1, 4096), ("write_zeroes", 1, 3 * MiB),
                              ("read", 1, 2 * MiB)):
            assert lun(m, "vsand_lun_requests_total", "e", op=op) == n, op
            assert lun(m, "vsand_lun_request_bytes_total", "e", op=op) == nbytes, op
        for op in ("write", "trim", "write_zeroes"):
            assert lun(m, "vsand_lun_request_duration_seconds_count", "e", op=op) == 1, op
        assert lun(m, "vsand_lun_request_duration_seconds_count", "e", op="read") == 1   # streamed
        # ops never sent have no histogram (its 21 lines would be zeros), but their counters
        assert ("vsand_lun_request_duration_seconds_count", (("lun", "e"), ("op", "cache"))) not in m
        assert lun(m, "vsand_lun_requests_total", "e", op="cache") == 0
        assert m["vsand_commit_duration_seconds_count", ()] >= 1      # the FUA write's
        healthy(d)
    finally:
        assert d.stop() == 0, d.read_log()


def test_refused_connections_are_counted(tmp_path):
    d, port = metrics_daemon(tmp_path, "--max-connections", "1")
    try:
        first = Conn(d, "unix")
        first.greeting()
        second = Conn(d, "unix")            # over the limit: refused (ERR_POLICY at its option)
        second.greeting()
        m = scrape(port)
        assert m["vsand_connections_refused_total", ()] == 1
        assert m["vsand_connections", ()] == 2        # both open, in the handshake
        first.close()
        second.close()
        healthy(d)
    finally:
        assert d.stop() == 0, d.read_log()


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (/proc/net/tcp*, by socket inode)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:       # LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def test_metrics_are_off_unless_configured(tmp_path):
    d = Daemon(tmp_path / "state", drives=4, drive_size="256M").start()
    try:
        assert listening_ports(d.proc.pid) == {d.port}       # NBD's port, nothing else
        assert "metrics listening" not in d.read_log()
    finally:
        assert d.stop() == 0
    d, port = metrics_daemon(tmp_path / "on")
    try:
        assert listening_ports(d.proc.pid) == {d.port, port}
        assert f"metrics listening on http://127.0.0.1:{port}/metrics" in d.read_log()
        assert "not on loopback" not in d.read_log()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=10)
        assert e.value.code == 404
    finally:
        assert d.stop() == 0


def test_a_taken_metrics_port_refuses_the_start_in_one_line(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        state = tmp_path / "state"
        r = start("--state-dir", state, "--drives", 4, "--drive-size", "256M", "--listen", "none",
                  "--metrics", port)
        assert r.returncode == 1
        line = one_line(r)
        assert f"cannot start: cannot listen on 127.0.0.1:{port} for metrics: address already in use" \
            in line and "--metrics HOST:PORT" in line, line
        assert not state.exists()                   # refused before anything was made
        # a pool that exists is left as it was, its sockets gone
        d = Daemon(state, drives=4, drive_size="256M").start()
        assert d.stop() == 0
        listing = sorted(os.listdir(state))
        r = start("--state-dir", state, "--listen", "none", "--metrics", f"127.0.0.1:{port}")
        assert r.returncode == 1 and "for metrics: address already in use" in one_line(r)
        assert sorted(os.listdir(state)) == listing
        assert not os.path.exists(d.sock) and not os.path.exists(d.control)


@pytest.mark.parametrize("value,says", [
    ('"localhost"', "metrics: expected HOST:PORT or PORT"),
    ('"127.0.0.1:0"', "metrics: expected HOST:PORT or PORT"),
    ("70000", "metrics: expected HOST:PORT or PORT"),
    ('"::1:9187"', "metrics: expected HOST:PORT or PORT"),
    ("true", "metrics: expected a string"),
])
def test_bad_metrics_config_is_one_line(tmp_path, value, says):
    cfg = tmp_path / "vsand.toml"
    cfg.write_text(f"metrics = {value}\n")
    r = start("--config", cfg, "--state-dir", tmp_path / "state")
    assert r.returncode == 2
    line = one_line(r)
    assert line.startswith("vsand: ") and says in line, line
    assert not (tmp_path / "state").exists()


def test_bad_metrics_flag_is_one_line(tmp_path):
    for value in ("nowhere", "127.0.0.1:http", "0", "[::1]"):
        r = start("--state-dir", tmp_path / "state", "--metrics", value)
        assert r.returncode == 2
        assert "argument --metrics: expected HOST:PORT or PORT" in one_line(r), r.stderr
    assert not (tmp_path / "state").exists()


def test_config_key_with_a_port_alone_listens_on_loopback(tmp_path):
    port = free_port()
    cfg = tmp_path / "vsand.toml"
    cfg.write_text(f"metrics = {port}\n")
    d = Daemon(tmp_path / "state", drives=4, drive_size="256M", extra=["--config", str(cfg)]).start()
    try:
        assert f"metrics listening on http://127.0.0.1:{port}/metrics" in d.read_log()
        assert scrape(port)["vsand_pool_degraded", ()] == 0
    finally:
        assert d.stop() == 0
    d.args += ["--metrics", "off"]         # the flag wins over the file, as for every key
    d.start()
    try:
        assert listening_ports(d.proc.pid) == {d.port}
    finally:
        assert d.stop() == 0


def test_a_listener_beyond_loopback_is_served_with_a_warning(tmp_path):
    """0.0.0.0 (every interface) is accepted, an admin may put a proxy in front, but
    the log says at start that nothing guards it. The test never connects to it."""
    port = free_port()
    try:
        with socket.socket() as s:
            s.bind(("0.0.0.0", port))
    except OSError as e:
        pytest.skip(f"cannot bind 0.0.0.0 here: {e}")
    d = Daemon(tmp_path / "state", drives=4, drive_size="256M",
               extra=["--metrics", f"0.0.0.0:{port}"]).start()
    try:
        deadline = time.monotonic() + 10
        while "metrics listening" not in d.read_log():
            assert time.monotonic() < deadline, d.read_log()
            time.sleep(0.05)
        assert port in listening_ports(d.proc.pid)
        warned = [line for line in d.read_log().splitlines() if "not on loopback" in line]
        assert len(warned) == 1 and "WARNING" in warned[0], d.read_log()
        assert f"0.0.0.0:{port}" in warned[0] and "no authentication and no TLS" in warned[0]
    finally:
        assert d.stop() == 0


def test_storage_errors_are_counted(tmp_path):
    """Errors from the drives, not the protocol: a RAID0 LUN loses a drive, so every
    READ of data on it and every WRITE fail with EIO, and each is counted."""
    d, port = metrics_daemon(tmp_path)
    try:
        d.ctl("lun.create", name="e", size=8 * MiB, raid=0)
        c = Conn(d, "unix").negotiate(name="e")
        for k in range(4):
            c.write(k * MiB, b"d" * 65536)
        assert c.reply_errno(c.request(C.CMD_FLUSH, 0, 0)) == 0
        d.ctl("drive.fail", index=0)
        failed = 0
        for k in range(4):
            failed += c.reply_errno(c.request(C.CMD_READ, k * MiB, 65536)) == C.EIO
            failed += c.reply_errno(c.request(C.CMD_WRITE, k * MiB, 4096, 0, b"w" * 4096)) == C.EIO
        c.close()
        assert failed >= 2, failed          # RAID0 over 4 drives: the failed one held data
        m = scrape(port)
        assert lun(m, "vsand_lun_errors_total", "e", errno="EIO") == failed
        assert m["vsand_pool_degraded", ()] == 1
    finally:
        d.stop()
