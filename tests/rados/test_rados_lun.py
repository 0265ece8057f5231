"""A vsand daemon whose pool lives on RADOS (plugins/rados/backend.py), through real
NBD clients: the data path, snapshots, snapclones with BGCOPY, revert and diffs work
as on local drives; restarts keep everything; a second daemon is refused; a daemon
whose lock was broken writes no more metadata and exits.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from daemonkit import Daemon, need, run
from plugins.rados import Cluster, WriteOp
from plugins.rados.owner import LOCK_NAME, META_OID

MiB = 1 << 20


def rados_args(cluster, ns):
    return ["--backend", "rados", "--rados-conf", cluster.conf, "--rados-pool", cluster.pool,
            "--rados-namespace", ns, "--scrub-interval", "off"]


def start(tmp_path, cluster, ns, name="d", extra=()) -> Daemon:
    return Daemon(tmp_path / name, drives=4, drive_size="1G",
                  extra=rados_args(cluster, ns) + list(extra)).start()


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_io(uri, *cmds, check=True):
    argv = ["qemu-io", "-f", "raw"]
    for c in cmds:
        argv += ["-c", c]
    return run(argv + [uri], check=check)


def objects(cluster, ns) -> list[str]:
    p = run(["rados", "-c", cluster.conf, "-p", cluster.pool, "-N", ns, "ls"])
    return sorted(p.stdout.split())


def test_lun_on_rados_survives_restarts(tmp_path, rados_cluster, rados_ns):
    need("qemu-io", "nbdinfo")
    d = start(tmp_path, rados_cluster, rados_ns)
    try:
        d.ctl("lun.create", name="vol", size=64 * MiB, raid=0)
        qemu_io(d.uri("vol"), "write -P 0xab 0 3M", "write -P 0xcd 40M 1M", "flush")
        # PSEG objects exist only where data was written: 4 MiB lands in at most 4 of
        # the 4 drives' first PSEG objects (RAID0 over 4 virtual drives, 2 MiB PSEGs)
        psegs = [o for o in objects(rados_cluster, rados_ns) if o != META_OID]
        assert 1 <= len(psegs) <= 8, psegs
        assert d.stop() == 0
        d.start()
        qemu_io(d.uri("vol"), "read -P 0xab 0 3M", "read -P 0xcd 40M 1M", "read -P 0 3M 37M")
        qemu_io(d.uri("vol"), "write -P 0x11 8M 1M", "flush")
        d.stop(sig=9)
        # a kill -9 leaves the lock to the dead client: the restarted daemon is a standby
        # that takes the pool over once the dead one's watch is gone
        d.args += ["--standby", "--heartbeat", f"127.0.0.1:{udp_port()}"]
        d.start()
        qemu_io(d.uri("vol"), "read -P 0xab 0 3M", "read -P 0x11 8M 1M", "read -P 0xcd 40M 1M")
        assert "took over" in d.read_log()
    finally:
        d.stop()


def test_snapshots_snapclones_revert_and_diffs_on_rados(tmp_path, rados_cluster, rados_ns):
    need("qemu-io")
    d = start(tmp_path, rados_cluster, rados_ns)
    try:
        d.ctl("lun.create", name="db", size=32 * MiB, raid=0)
        qemu_io(d.uri("db"), "write -P 0x01 0 8M", "flush")
        d.ctl("snapshot.create", source="db", name="mon")
        qemu_io(d.uri("db"), "write -P 0x02 4M 2M", "flush")
        # the snapshot reads the old bytes, the LUN the new ones
        qemu_io(d.uri("mon"), "read -P 0x01 0 8M")
        qemu_io(d.uri("db"), "read -P 0x01 0 4M", "read -P 0x02 4M 2M", "read -P 0x01 6M 2M")
        diff = d.ctl("diff", name="db", since="mon")
        assert diff["extents"] == [[4 * MiB, 2 * MiB]], diff    # whole 1 MiB segments
        # a snapclone copied by BGCOPY becomes an independent LUN with the old bytes
        t = d.ctl("snapclone.create", source="mon", name="copy")
        deadline = time.monotonic() + 120
        while d.ctl("task.show", id=t["task"])["state"] != "done":
            assert time.monotonic() < deadline, d.ctl("task.show", id=t["task"])
            assert d.ctl("task.show", id=t["task"])["state"] in ("running", "queued", "done")
            time.sleep(0.1)
        qemu_io(d.uri("copy"), "read -P 0x01 0 8M")
        # revert: db reads as at the snapshot; the newer bytes are kept aside
        d.ctl("lun.revert", name="db", to="mon", keep="oops", force=True)
        qemu_io(d.uri("db"), "read -P 0x01 0 8M")
        qemu_io(d.uri("oops"), "read -P 0x02 4M 2M")
        assert d.stop() == 0
        d.start()
        qemu_io(d.uri("db"), "read -P 0x01 0 8M")
        qemu_io(d.uri("copy"), "read -P 0x01 0 8M")
        qemu_io(d.uri("oops"), "read -P 0x02 4M 2M")
        d.ctl("lun.delete", name="oops", force=True)
        d.ctl("lun.delete", name="copy", force=True)
    finally:
        d.stop()


def test_second_daemon_is_refused(tmp_path, rados_cluster, rados_ns):
    need("qemu-io")
    d = start(tmp_path, rados_cluster, rados_ns)
    try:
        d.ctl("lun.create", name="one", size=16 * MiB, raid=0)
        qemu_io(d.uri("one"), "write -P 0x5a 0 1M", "flush")
        other = Daemon(tmp_path / "other", drives=4, drive_size="1G",
                       extra=rados_args(rados_cluster, rados_ns))
        with pytest.raises(RuntimeError) as ei:
            other.start()
        assert "owned by another daemon" in str(ei.value) and "--standby" in str(ei.value)
        qemu_io(d.uri("one"), "read -P 0x5a 0 1M")
    finally:
        d.stop()


def test_a_daemon_whose_lock_was_broken_writes_nothing_and_exits(tmp_path, rados_cluster, rados_ns):
    """The guard: once the lock is someone else's, the daemon's next metadata write
    (the commit of a flushed write) fails EBUSY inside RADOS; the daemon logs it and
    exits 75 without writing, and the FLUSH is answered with an error, never OK."""
    need("qemu-io")
    d = start(tmp_path, rados_cluster, rados_ns)
    d.ctl("lun.create", name="vol", size=16 * MiB, raid=0)
    qemu_io(d.uri("vol"), "write -P 0x33 0 1M", "flush")
    with Cluster(rados_cluster.conf, timeout=10) as c, c.open_ioctx(rados_cluster.pool, rados_ns) as io:
        lk = io.list_lockers(META_OID, LOCK_NAME).lockers[0]
        io.break_lock(META_OID, LOCK_NAME, lk.client, lk.cookie)
        keys_before = io.omap_get(META_OID)
        # a new LD needs a commit: refused by the guard
        with pytest.raises(Exception):
            d.ctl("lun.create", name="late", size=16 * MiB, raid=0)
        deadline = time.monotonic() + 30
        while d.proc.poll() is None:
            assert time.monotonic() < deadline, d.read_log()
            time.sleep(0.05)
        assert d.proc.returncode == 75, d.read_log()
        assert "lost the pool" in d.read_log()
        assert io.omap_get(META_OID) == keys_before
        io.operate(META_OID, WriteOp().omap_set({"probe": b"1"}))   # the cluster itself is fine
    os.unlink(d.control) if os.path.exists(d.control) else None


@pytest.mark.rados_exclusive
def test_a_stalled_cluster_fails_requests_not_the_lun(tmp_path, rados_cluster, rados_ns):
    """The OSD stopped for longer than the RADOS timeout: requests get EIO after the
    timeout (never a hang), the daemon lives on, no drive is failed, and once the OSD
    is back the LUN reads and writes again, with what was flushed before."""
    import radoskit
    need("qemu-io")
    d = start(tmp_path, rados_cluster, rados_ns, extra=["--rados-timeout", "2s",
                                                        "--drive-error-limit", "2"])
    try:
        d.ctl("lun.create", name="vol", size=16 * MiB, raid=0)
        qemu_io(d.uri("vol"), "write -P 0x42 0 2M", "flush")
        with radoskit.osd_stopped(rados_cluster):
            for k in range(3):      # more errors on drive 0 than drive_error_limit
                r = qemu_io(d.uri("vol"), f"read {k * 64}k 64k", check=False)
                assert r.returncode != 0 or "error" in (r.stdout + r.stderr).lower(), r
            assert d.proc.poll() is None
        deadline = time.monotonic() + 60
        while qemu_io(d.uri("vol"), "read -P 0x42 0 2M", check=False).returncode != 0:
            assert time.monotonic() < deadline, d.read_log()
            time.sleep(0.2)
        assert not any(x["failed"] for x in d.ctl("drive.list")), d.ctl("drive.list")
        qemu_io(d.uri("vol"), "write -P 0x43 4M 1M", "flush", "read -P 0x43 4M 1M")
        assert "not failed: its backend keeps its own redundancy" in d.read_log()
    finally:
        d.stop()


def test_offline_checker_on_a_rados_pool(tmp_path, rados_cluster, rados_ns):
    """`vsand check --config FILE` checks the pool of the file's RADOS backend: clean
    when stopped, refused (exit 2, naming the owner) while a daemon holds it, read
    anyway with --live; a drive whose label was removed behind vsand's back is a
    problem (its RAID0 data is unreadable); a pool that is not there is one line."""
    from daemonkit import VSAND
    need("qemu-io")
    cfg = tmp_path / "vsand.toml"
    cfg.write_text(f'backend = "rados"\n[rados]\nconf = "{rados_cluster.conf}"\n'
                   f'pool = "{rados_cluster.pool}"\nnamespace = "{rados_ns}"\n')
    d = start(tmp_path, rados_cluster, rados_ns)
    try:
        d.ctl("lun.create", name="vol", size=16 * MiB, raid=0)
        d.ctl("snapshot.create", source="vol", name="snap")
        qemu_io(d.uri("vol"), "write -P 0x21 0 4M", "flush")
        busy = run(VSAND + ["check", "--config", str(cfg)], check=False)
        assert busy.returncode == 2 and "is owned by client." in busy.stderr, busy
        live = run(VSAND + ["check", "--config", str(cfg), "--live"], check=False)
        assert live.returncode == 0 and "clean: 4 drives" in live.stdout, live
    finally:
        d.stop()
    ok = run(VSAND + ["check", "--config", str(cfg), "--parity"], check=False)
    assert ok.returncode == 0 and "clean: 4 drives" in ok.stdout, ok
    with Cluster(rados_cluster.conf, timeout=10) as c, c.open_ioctx(rados_cluster.pool, rados_ns) as io:
        io.operate(META_OID, WriteOp().omap_rm(["q001.000000"]))
    gone = run(VSAND + ["check", "--config", str(cfg)], check=False)
    assert gone.returncode == 1 and "drive 1" in gone.stdout, gone
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace(f'pool = "{rados_cluster.pool}"', 'pool = "nopool"'))
    r = run(VSAND + ["check", "--config", str(bad)], check=False)
    assert r.returncode == 2 and "RADOS pool 'nopool'" in r.stderr and "Traceback" not in r.stderr, r
