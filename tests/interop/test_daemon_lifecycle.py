"""The daemon as a service: sd_notify, socket activation, SIGTERM drain, restart."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import ROOT, VSAND, Daemon, need, run
from vsand.physical import uring

def test_sd_notify_ready_and_stopping(tmp_path):
    ns = str(tmp_path / "notify.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(ns)
    rx.settimeout(30)
    d = Daemon(tmp_path / "state")
    env_before = os.environ.get("NOTIFY_SOCKET")
    os.environ["NOTIFY_SOCKET"] = ns
    try:
        d.start()
    finally:
        if env_before is None:
            del os.environ["NOTIFY_SOCKET"]
        else:
            os.environ["NOTIFY_SOCKET"] = env_before
    msgs = [rx.recv(4096).decode()]
    assert "READY=1" in msgs[0]
    assert os.path.exists(d.sock)        # READY only once the listeners are up
    assert d.stop() == 0
    msgs.append(rx.recv(4096).decode())
    assert "STOPPING=1" in msgs[1]
    rx.close()


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"), reason="systemd-socket-activate is missing")
def test_socket_activation(tmp_path):
    need("nbdinfo")
    state = tmp_path / "state"
    sock = str(tmp_path / "activated.sock")
    ctl = str(state / "control.sock")
    proc = subprocess.Popen(["systemd-socket-activate", "-l", sock, "--fdname=nbd",
                             *VSAND, "--state-dir", str(state), "--drive-size", "1G"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        # systemd-socket-activate starts the service on the first connection.
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        r = run(["nbdinfo", "--list", f"nbd+unix:///?socket={sock}"], check=False)
        while not os.path.exists(ctl) and time.monotonic() < deadline:
            time.sleep(0.05)
        from vsand.control.client import call
        call(ctl, "lun.create", name="act", size=64 << 20, raid=0)
        r = run(["nbdinfo", "--list", f"nbd+unix:///?socket={sock}"])
        assert 'export="act"' in r.stdout
        # the daemon did not bind its own default socket: the inherited one is used
        assert not os.path.exists(state / "nbd.sock")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, out
    assert "inherited socket" in out


def test_sigterm_drains_and_data_survives_restart(tmp_path):
    need("qemu-io")
    d = Daemon(tmp_path / "state").start()
    d.ctl("lun.create", name="keep", size=256 << 20, raid=5)
    # many writes in flight without a FLUSH; qemu-io -t none uses no FUA per write
    ops = []
    for i in range(64):
        ops += ["-c", f"aio_write -P {i % 250 + 1} {i * 1048576 + 512} 65536"]
    ops += ["-c", "aio_flush"]
    run(["qemu-io", "-f", "raw", "-t", "none", *ops, d.uri("keep")])
    # unflushed writes from a second client, then SIGTERM while it is connected
    need("stdbuf")
    p = subprocess.Popen(["stdbuf", "-oL", "qemu-io", "-f", "raw", "-t", "writeback",
                          "-c", "write -P 0x77 200M 4M", "-c", "sleep 3000", d.uri("keep")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # SIGTERM once the write is answered (qemu-io prints "wrote" then), not after a time
    out, deadline = b"", time.monotonic() + 60
    while b"wrote 4194304/4194304" not in out:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([p.stdout], [], [], left)[0], f"no reply to the write: {out!r}"
        got = os.read(p.stdout.fileno(), 65536)
        assert got, f"qemu-io ended before its write was answered: {out!r}"
        out += got
    assert d.stop() == 0, d.read_log()
    p.wait(30)
    assert "stopped cleanly" in d.read_log()
    d.start()
    for i in range(0, 64, 7):
        run(["qemu-io", "-f", "raw", "-c", f"read -P {i % 250 + 1} {i * 1048576 + 512} 65536", d.uri("keep")])
    # the write answered before SIGTERM is durable too: the drain commits on the way out
    run(["qemu-io", "-f", "raw", "-c", "read -P 0x77 200M 4M", d.uri("keep")])
    assert d.stop() == 0
    r = run(VSAND + ["check", d.state_dir], check=False, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_bad_config_and_unopenable_pool_fail_cleanly(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('state_dir = "x"\nno_such_key = 1\n')
    r = run(VSAND + ["--config", str(bad)], check=False, cwd=ROOT)
    assert r.returncode == 2 and "unknown keys" in r.stderr
    for flag, value, says in (("--max-connections", "0", "must be at least 1"),
                              ("--max-connections", "many", "not a whole number: 'many'"),
                              ("--idle-timeout", "-5", "must be >= 0, not '-5'"),
                              ("--io-threads", "-1", "must be >= 0, not '-1'"),
                              ("--io-threads", "some", "not a whole number: 'some'"),
                              ("--io-engine", "aio", "expected one of auto, uring, threads, not 'aio'"),
                              ("--drive-error-limit", "0", "must be at least 1"),
                              ("--scrub-interval", "soon", "expected a duration such as 30d"),
                              ("--scrub-interval", "3x", "expected a duration such as 30d")):
        r = run(VSAND + [flag, value], check=False, cwd=ROOT)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    bad.write_text('io_engine = "libaio"\n')
    r = run(VSAND + ["--config", str(bad)], check=False, cwd=ROOT)
    assert r.returncode == 2 and "io_engine" in r.stderr and "libaio" in r.stderr, r.stderr
    bad.write_text('drive_error_limit = "lots"\n')
    r = run(VSAND + ["--config", str(bad)], check=False, cwd=ROOT)
    assert r.returncode == 2 and "drive_error_limit" in r.stderr and "lots" in r.stderr, r.stderr
    bad.write_text('max_connections = 0\n')
    r = run(VSAND + ["--config", str(bad)], check=False, cwd=ROOT)
    assert r.returncode == 2 and "max_connections" in r.stderr and "at least 1" in r.stderr, r.stderr
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"VSANDLBL" + bytes(100000))
    r = run(VSAND + ["--state-dir", str(tmp_path / "s"), "--drive", str(junk), "--listen", "none"],
            check=False, cwd=ROOT, timeout=60)
    assert r.returncode == 1 and "cannot start" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("engine,says", [("auto", "io_uring"), ("threads", "worker threads")])
def test_reads_that_miss_the_cache_in_each_io_engine(tmp_path, engine, says):
    """Data the page cache no longer holds (the drives' pages dropped) is read through
    io_uring or worker threads, as configured, and reads back right; 32 READs in
    flight at once (qemu-io aio) land in any order."""
    need("qemu-io")
    d = Daemon(tmp_path / "state", drives=4, drive_size="256M", extra=["--io-engine", engine])
    d.start()
    try:
        log = d.read_log()
        if engine == "auto" and "io_uring" not in log:
            pytest.skip("no io_uring here: " + log.split("page cache: ")[-1].split("\n")[0])
        assert f"drive reads that miss the page cache: {says}" in log
        d.ctl("lun.create", name="m", size=64 << 20, raid=0)
        cmds = [f"write -P {i % 250 + 1} {i}M 1M" for i in range(64)]
        run(["qemu-io", "-f", "raw", *sum((["-c", c] for c in cmds), []), "-c", "flush", d.uri("m")])
        for path in d.drive_flags():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        reads = [f"aio_read -P {i % 250 + 1} {i}M 4k" for i in range(0, 64, 2)]
        reads += ["aio_flush"] + [f"read -P {i % 250 + 1} {i}M 1M" for i in range(1, 64, 2)]
        r = run(["qemu-io", "-f", "raw", *sum((["-c", c] for c in reads), []), d.uri("m")])
        assert "Pattern verification failed" not in r.stdout + r.stderr
    finally:
        assert d.stop() == 0


def test_io_engine_when_the_kernel_refuses_io_uring(tmp_path):
    """kernel.io_uring_disabled = 2 (as a hardened host may set it): ``uring``
    refuses to start with the reason, ``auto`` falls back to worker threads and
    says why. Root only: the setting is the machine's, restored at once."""
    knob = "/proc/sys/kernel/io_uring_disabled"
    if not os.path.exists(knob) or os.geteuid() != 0:
        pytest.skip(f"needs root and {knob} (Linux 6.6 or later)")
    why = uring._probe()
    if why:                 # the binding cannot run here at all: nothing for the kernel to refuse
        pytest.skip(why)
    with open(knob) as f:
        before = f.read().strip()
    with open(knob, "w") as f:
        f.write("2")
    try:
        r = run(VSAND + ["--state-dir", str(tmp_path / "u"), "--drives", "4", "--drive-size", "256M",
                         "--listen", "none", "--io-engine", "uring"], check=False, cwd=ROOT, timeout=60)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert "cannot start: io_engine uring: io_uring refused" in r.stderr, r.stderr
        d = Daemon(tmp_path / "a", drives=4, drive_size="256M")
        d.start()
        try:
            assert "drive reads that miss the page cache: worker threads (io_uring refused" \
                in d.read_log()
            d.ctl("lun.create", name="m", size=16 << 20, raid=0)
            run(["qemu-io", "-f", "raw", "-c", "write -P 9 0 1M", "-c", "read -P 9 0 1M", d.uri("m")])
        finally:
            assert d.stop() == 0
    finally:
        with open(knob, "w") as f:
            f.write(before)
