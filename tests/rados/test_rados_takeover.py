"""An active daemon and its standby on one RADOS pool (issue 15, item 3): a kill -9 of
the active under fio load, and a hung (SIGSTOPped) active that wakes up after the
standby took over.

Each daemon is a real ``python -m vsand`` process; the active sends UDP heartbeats to
the standby, which takes over once they stop and the active's watch on the metadata
object has expired. Clients are real: fio's nbd engine for load, a libnbd writer that
logs what it flushed, qemu-io to read back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from daemonkit import SYS_PY, Daemon, need, run
from test_rados_lun import qemu_io, rados_args, udp_port

MiB = 1 << 20
BLOCK = 64 * 1024

# Writes block i with a pattern of its own; every 8 blocks a FLUSH, then prints the
# highest block whose FLUSH succeeded. Stops at the first error.
WRITER = r"""
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
BLOCK = %d
i = 0
try:
    while i < int(sys.argv[2]):
        h.pwrite(bytes([i %% 251 + 1]) * BLOCK, i * BLOCK)
        i += 1
        if i %% 8 == 0:
            h.flush()
            print(i, flush=True)
except nbd.Error as e:
    print("error", e, flush=True)
""" % BLOCK


def wait_for(cond, what: str, deadline: float = 90.0, proc=None):
    end = time.monotonic() + deadline
    while True:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


class Pair:
    """Daemon A (active) and B (standby) with each other as heartbeat peers."""

    def __init__(self, tmp_path, cluster, ns):
        ha, hb = udp_port(), udp_port()
        self.a = Daemon(tmp_path / "a", drives=4, drive_size="1G", extra=rados_args(cluster, ns) + [
            "--heartbeat", f"127.0.0.1:{ha}", "--peer", f"127.0.0.1:{hb}"])
        self.b = Daemon(tmp_path / "b", drives=4, drive_size="1G", extra=rados_args(cluster, ns) + [
            "--standby", "--heartbeat", f"127.0.0.1:{hb}", "--peer", f"127.0.0.1:{ha}"])

    def start(self):
        self.a.start()
        b = self.b
        os.makedirs(b.state_dir, exist_ok=True)
        b.proc = subprocess.Popen(b.args, stdout=open(b.log, "ab"), stderr=subprocess.STDOUT,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
        # the standby hears the active: it answers its heartbeats and does not take over
        wait_for(lambda: "standby: hearing the active daemon" in b.read_log(),
                 "the standby to hear the active", proc=b.proc)
        return self

    def stop(self):
        for d in (self.a, self.b):
            if d.proc is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGCONT)
                d.stop()


def served(d: Daemon, name: str) -> bool:
    return run(["qemu-io", "-f", "raw", "-c", "read 0 4k", d.uri(name, tcp=True)],
               check=False).returncode == 0


def test_kill9_of_the_active_under_fio_load(tmp_path, rados_cluster, rados_ns):
    need("fio", "qemu-io")
    if run([SYS_PY, "-c", "import nbd"], check=False).returncode != 0:
        import pytest
        pytest.skip("the libnbd Python binding is missing (python3-libnbd)")
    p = Pair(tmp_path, rados_cluster, rados_ns)
    p.a.start()
    p.a.ctl("lun.create", name="vol", size=64 * MiB, raid=0)
    p.a.ctl("lun.create", name="load", size=64 * MiB, raid=0)
    p.a.stop()
    p.start()
    writer = fio = None
    try:
        fio = subprocess.Popen(["fio", "--name=load", "--ioengine=nbd", f"--uri={p.a.uri('load', tcp=True)}",
                                "--rw=randwrite", "--bs=16k", "--size=32M", "--iodepth=8",
                                "--time_based", "--runtime=120", "--fsync=16"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        writer = subprocess.Popen([SYS_PY, "-c", WRITER, p.a.uri("vol", tcp=True), "1000"],
                                  stdout=subprocess.PIPE, text=True,
                                  env=dict(os.environ, PATH="/usr/bin:" + os.environ["PATH"]))
        flushed = 0
        while flushed < 96:
            line = writer.stdout.readline()
            assert line and not line.startswith("error"), line
            flushed = int(line)
        p.a.proc.kill()                         # kill -9 while fio and the writer run
        t0 = time.monotonic()
        p.a.proc.wait()
        for line in writer.stdout:              # FLUSHes the dying daemon answered
            if line.strip().isdigit():
                flushed = int(line)
        writer.wait(60)
        wait_for(lambda: "took over" in p.b.read_log(), "the standby to take over", proc=p.b.proc)
        wait_for(lambda: served(p.b, "vol"), "the standby to serve vol", proc=p.b.proc)
        took = time.monotonic() - t0
        print(f"kill -9 to first served read: {took:.2f} s")
        # every block whose FLUSH was answered reads as written
        cmds = [f"read -P {i % 251 + 1} {i * BLOCK} {BLOCK}" for i in range(flushed)]
        for k in range(0, len(cmds), 100):
            qemu_io(p.b.uri("vol", tcp=True), *cmds[k:k + 100])
        assert served(p.b, "load")
    finally:
        for proc in (writer, fio):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        p.stop()


def test_a_hung_active_is_taken_over_and_writes_nothing_when_it_wakes(tmp_path, rados_cluster, rados_ns):
    need("qemu-io")
    if run([SYS_PY, "-c", "import nbd"], check=False).returncode != 0:
        import pytest
        pytest.skip("the libnbd Python binding is missing (python3-libnbd)")
    p = Pair(tmp_path, rados_cluster, rados_ns)
    p.a.start()
    p.a.ctl("lun.create", name="vol", size=16 * MiB, raid=0)
    qemu_io(p.a.uri("vol", tcp=True), "write -P 0x11 0 1M", "flush")
    p.a.stop()
    p.start()
    late = None
    try:
        # a client connected to A, whose write and flush reach A only after it wakes
        late = subprocess.Popen([SYS_PY, "-c", r"""
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("connected", flush=True)
sys.stdin.readline()
try:
    h.pwrite(b"\x99" * (1 << 20), 0)
    h.flush()
    print("flushed", flush=True)
except nbd.Error as e:
    print("error", e, flush=True)
""", p.a.uri("vol", tcp=True)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, PATH="/usr/bin:" + os.environ["PATH"]))
        assert late.stdout.readline().strip() == "connected"
        p.a.proc.send_signal(signal.SIGSTOP)
        late.stdin.write("go\n")
        late.stdin.flush()
        wait_for(lambda: "took over" in p.b.read_log(), "the standby to take over", proc=p.b.proc)
        wait_for(lambda: served(p.b, "vol"), "the standby to serve vol", proc=p.b.proc)
        p.a.proc.send_signal(signal.SIGCONT)
        rc = p.a.proc.wait(60)
        log = p.a.read_log()
        assert rc == 75, log
        assert "exiting without writing" in log, log
        out = late.communicate(timeout=60)[0]
        assert "flushed" not in out, out
        # the new owner reads what was flushed before the hang, not the late write
        qemu_io(p.b.uri("vol", tcp=True), "read -P 0x11 0 1M")
        assert served(p.b, "vol")
    finally:
        if late is not None and late.poll() is None:
            late.kill()
        p.stop()
