#!/usr/bin/env python3
"""RADOS LUN benchmark (issue 15, item 5): a vsand LUN whose pool lives on Ceph RADOS
against an RBD image of the same cluster served by qemu-nbd, in one run, with the fio set
of scripts/bench_datapath.py.

Targets:  vsand-rados  (fio nbd engine over vsand's UNIX socket; vsand started with
                        backend rados on the cluster's PSEG pool, a RAID0 LUN: redundancy
                        is the RADOS pool's),
          qemu-nbd-rbd (fio nbd engine; qemu-nbd's rbd block driver on an RBD image in a
                        pool with the same PG count and replica count; --qemu-cache, default
                        writeback, which turns librbd's cache on as qemu does),
          rbd-nbd      (the kernel's NBD client on librbd: needs the nbd kernel module and
                        /dev/nbd*; reported as not run when they are missing).
Jobs:     as bench_datapath.py: 4K random read and write at QD1 and QD32; 1 MiB sequential
          read and write at QD1, QD8 and QD32; "flush": a 4K random reader at QD1 alone,
          then beside a client that FLUSHes after every 4K write.
Mode:     warm only. The OSDs read their block files with O_DIRECT and cache in their own
          memory, so dropping the host's page cache makes nothing cold.
Each cell: IOPS / MiB/s / p99 completion latency and the ratio to qemu-nbd-rbd; with
--rounds N a cell is the median of N runs.

The cluster: by default a throw-away one from scripts/rados_up.sh (--osds N bluestore OSDs,
pool size N, min_size N-1; free mon ports; removed at the end), its start time and its
daemons' memory printed; or an existing one (--conf, --pool), where the bench creates an
RBD pool (--rbd-pool) if missing and removes its image and its vsand namespace at the end.
Root is needed for the cluster's daemons.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)
from bench_datapath import (FLUSH, JOBS, Target, measure, new_run, print_results,  # noqa: E402
                            progress)
from benchlib import Servers, Vsand  # noqa: E402
from vsand.control.client import ControlError  # noqa: E402
from vsand.units import GiB, MiB, parse_size  # noqa: E402

SCRIPT = os.path.join(REPO, "scripts", "rados_up.sh")
TARGETS = ("vsand-rados", "qemu-nbd-rbd", "rbd-nbd")
BASE = "qemu-nbd-rbd"
DRIVES = 8


def rss_mib(ceph_dir: str) -> dict[str, float]:
    """Resident memory (MiB) of each daemon of the cluster in ``ceph_dir``."""
    p = subprocess.run(["bash", SCRIPT, "rss"], env=dict(os.environ, CEPH_DIR=ceph_dir),
                       capture_output=True, text=True)
    return {name: float(mib) for name, mib in (line.split() for line in p.stdout.splitlines())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ceph:
    """The cluster the targets share: started here (``up``) or given (``conf``, ``pool``)."""

    def __init__(self, conf: str | None, pool: str, rbd_pool: str, pg_num: int):
        self.conf, self.pool, self.rbd_pool, self.pg_num = conf, pool, rbd_pool, pg_num
        self.ceph_dir: str | None = None    # set when this run started the cluster
        self.up_seconds: float | None = None

    def up(self, work: str, osds: int, osd_size_gb: int) -> None:
        self.ceph_dir = os.path.join(work, "ceph")
        env = dict(os.environ, CEPH_DIR=self.ceph_dir, N_OSDS=str(osds), POOL=self.pool,
                   PG_NUM=str(self.pg_num), POOL_SIZE=str(osds),
                   POOL_MIN_SIZE=str(max(1, osds - 1)), OSD_SIZE_GB=str(osd_size_gb),
                   MGR="0", WAIT="io", MON_PORT_V2=str(free_port()), MON_PORT_V1=str(free_port()))
        t0 = time.monotonic()
        p = subprocess.run(["bash", SCRIPT, "up"], env=env, capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError("rados_up.sh up failed: " + (p.stdout + p.stderr)[-1500:])
        self.up_seconds = time.monotonic() - t0
        self.conf = os.path.join(self.ceph_dir, "ceph.conf")

    def purge(self) -> None:
        if self.ceph_dir:
            subprocess.run(["bash", SCRIPT, "purge"], env=dict(os.environ, CEPH_DIR=self.ceph_dir),
                           capture_output=True)

    def run(self, *argv: str) -> str:
        p = subprocess.run([argv[0], "-c", self.conf, *argv[1:]], capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()[-800:]}")
        return p.stdout

    def rbd_image(self, name: str, size: int) -> str:
        """An RBD image of ``size`` in the RBD pool (made like the PSEG pool); returns its
        qemu block filename."""
        self.run("ceph", "osd", "pool", "create", self.rbd_pool, str(self.pg_num),
                 str(self.pg_num), "replicated")
        self.run("ceph", "osd", "pool", "application", "enable", self.rbd_pool, "rbd")
        self.run("rbd", "pool", "init", self.rbd_pool)
        self.run("rbd", "create", "--size", f"{size // MiB}M", f"{self.rbd_pool}/{name}")
        return f"rbd:{self.rbd_pool}/{name}:conf={self.conf}"

    def rss_mib(self) -> dict[str, float]:
        return rss_mib(self.ceph_dir) if self.ceph_dir else {}

    def cleanup(self, image: str | None, namespace: str | None) -> None:
        """On a cluster this run did not start: remove what the run wrote."""
        if self.ceph_dir:
            return
        if image:
            subprocess.run(["rbd", "-c", self.conf, "rm", f"{self.rbd_pool}/{image}"],
                           capture_output=True)
        if namespace:
            from plugins.rados import Cluster, ObjectNotFound
            names = self.run("rados", "-p", self.pool, "-N", namespace, "ls").split()
            with Cluster(self.conf) as c, c.open_ioctx(self.pool, namespace) as io:
                for oid in names:
                    try:
                        io.remove(oid)
                    except ObjectNotFound:
                        pass


def rbd_nbd_unavailable() -> str | None:
    """Why rbd-nbd cannot run here (it maps the image as a kernel /dev/nbdN)."""
    why = []
    if not os.path.isdir("/sys/module/nbd") and not glob.glob("/dev/nbd[0-9]*"):
        why.append("no nbd kernel module on this machine (/sys/module/nbd and /dev/nbd* missing)")
    if not shutil.which("rbd-nbd"):
        why.append("rbd-nbd is not installed (Debian package rbd-nbd)")
    # with both present, mapping (rbd-nbd map) and fio on /dev/nbdN is still to be written
    return "; ".join(why) or "this benchmark does not map rbd-nbd devices yet"


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_log(path: str, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while True:
        with open(path, errors="replace") as f:
            if text in f.read():
                return
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"vsand ({path}) never logged {text!r}")
        time.sleep(0.02)


def _reads(uri: str) -> bool:
    return subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 4k", uri],
                          capture_output=True).returncode == 0


def _takeover_once(ceph: Ceph, work: str, k: int) -> float:
    """One active/standby pair on its own namespace: the active serves a RAID0 LUN to a
    fio randwrite client with FLUSHes, is killed -9, and the time until the standby
    serves a read is returned."""
    ns = f"takeover-{uuid.uuid4().hex[:8]}"
    ha, hb = udp_port(), udp_port()
    procs: list[subprocess.Popen] = []
    try:
        def daemon(name: str, *extra: str) -> tuple[subprocess.Popen, str, str]:
            state = os.path.join(work, f"takeover{k}-{name}")
            os.makedirs(state)
            port = free_port()
            logf = os.path.join(state, "log")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "vsand", "--state-dir", state, "--drives", "4",
                 "--drive-size", "1G", "--listen", f"127.0.0.1:{port}", "--scrub-interval", "off",
                 "--backend", "rados", "--rados-conf", ceph.conf, "--rados-pool", ceph.pool,
                 "--rados-namespace", ns, *extra], stdout=open(logf, "ab"), stderr=subprocess.STDOUT))
            return procs[-1], logf, f"nbd://127.0.0.1:{port}/r"
        a, alog, auri = daemon("a", "--heartbeat", f"127.0.0.1:{ha}", "--peer", f"127.0.0.1:{hb}")
        _wait_log(alog, "serving", a)
        Vsand(os.path.dirname(alog)).call("lun.create", name="r", size=256 * MiB, raid=0)
        b, blog, buri = daemon("b", "--standby", "--heartbeat", f"127.0.0.1:{hb}",
                               "--peer", f"127.0.0.1:{ha}")
        _wait_log(blog, "standby: hearing the active daemon at", b)
        procs.append(subprocess.Popen(
            ["fio", "--name=load", "--ioengine=nbd", f"--uri={auri}", "--rw=randwrite", "--bs=16k",
             "--size=64M", "--iodepth=8", "--fsync=16", "--time_based", "--runtime=60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(2)                       # under load
        a.kill()
        t0 = time.monotonic()
        while not _reads(buri):
            if b.poll() is not None or time.monotonic() - t0 > 120:
                raise RuntimeError(f"the standby did not take over ({blog})")
            time.sleep(0.02)
        return time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        ceph.cleanup(None, ns)


def measure_takeover(ceph: Ceph, work: str, rounds: int = 3) -> dict | None:
    """kill -9 of the active daemon under fio load to the first read the standby serves,
    ``rounds`` times (a new pair each time)."""
    if not shutil.which("qemu-io"):
        return None
    times = sorted(_takeover_once(ceph, work, k) for k in range(rounds))
    progress("takeover: " + ", ".join(f"{t:.2f} s" for t in times))
    return {"median_s": round(times[len(times) // 2], 2), "min_s": round(times[0], 2),
            "max_s": round(times[-1], 2), "rounds": rounds}


def report_takeover(t: dict | None) -> str:
    if t is None:
        return "takeover (kill -9 of the active daemon to the first read served): not measured"
    return "takeover (kill -9 of the active daemon to the first read served): " + \
        ", ".join(f"{k} {v}" for k, v in t.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", type=int, default=5, help="seconds per fio job (5)")
    ap.add_argument("--size", default="1G", help="data set per target (1G)")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"subset of {','.join(TARGETS)}")
    ap.add_argument("--jobs", default=",".join([*JOBS, FLUSH]),
                    help=f"subset of {','.join([*JOBS, FLUSH])}")
    ap.add_argument("--rounds", type=int, default=1,
                    help="runs of every job over all targets in turn; a cell is the median (1)")
    ap.add_argument("--osds", type=int, default=1, choices=(1, 2, 3),
                    help="OSDs of the throw-away cluster; pool size = this (1)")
    ap.add_argument("--conf", help="ceph.conf of an existing cluster instead of a throw-away one")
    ap.add_argument("--pool", default="psegs", help="pool of vsand's PSEG objects (psegs)")
    ap.add_argument("--rbd-pool", default="rbd", help="pool of the RBD image, created if missing (rbd)")
    ap.add_argument("--pg-num", type=int, default=32, help="PGs of each pool the bench creates (32)")
    ap.add_argument("--qemu-cache", default="writeback",
                    help="qemu-nbd --cache (writeback: librbd's cache on, as qemu sets it)")
    ap.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/var/tmp"),
                    help="where the cluster and vsand's state go (the OSD files grow by "
                         "size x targets x replicas)")
    args = ap.parse_args()
    names = [t for t in args.targets.split(",") if t]
    jobs = [j for j in args.jobs.split(",") if j]
    for kind, got, known in (("target", names, TARGETS), ("job", jobs, [*JOBS, FLUSH])):
        bad = [g for g in got if g not in known]
        if bad:
            ap.error(f"unknown {kind} {', '.join(bad)}; known: {', '.join(known)}")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    size = parse_size(args.size)
    if size % MiB:
        ap.error("--size must be a multiple of 1 MiB (a LUN size)")
    tools = ["fio", "rados", "ceph"] + (["rbd", "qemu-nbd"] if BASE in names else [])
    if not args.conf:
        tools += ["ceph-mon", "ceph-osd"]
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        print(f"{', '.join(missing)} missing (`make deps` installs them as root)", file=sys.stderr)
        return 2
    if not args.conf and os.geteuid() != 0:
        print("the throw-away cluster's daemons run as root (or give --conf)", file=sys.stderr)
        return 2

    res, jobs, flush = new_run(args, size, jobs)
    if "rbd-nbd" in names:
        names.remove("rbd-nbd")
        why = rbd_nbd_unavailable()
        res["skipped"].append(f"rbd-nbd: {why}")
        progress(f"rbd-nbd not run: {why}")
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="bench-rados-lun-", dir=args.dir)
    ceph = Ceph(args.conf, args.pool, args.rbd_pool, args.pg_num)
    image, namespace = f"bench-{uuid.uuid4().hex[:8]}", f"bench-{uuid.uuid4().hex[:8]}"
    try:
        if not args.conf:
            # room for every target's data set on every replica, twice over, at least 10 GiB
            ceph.up(work, args.osds, max(10, -(-2 * size * len(names) // GiB)))
            res["cluster_up_s"] = ceph.up_seconds
            progress(f"cluster: {args.osds} OSD(s) up in {ceph.up_seconds:.1f} s")
        with Servers() as srv:
            targets: dict[str, Target] = {}
            if "vsand-rados" in names:
                v = srv.vsand(os.path.join(work, "vsand"), max(size, GiB), drives=DRIVES, extra=[
                    "--backend", "rados", "--rados-conf", ceph.conf, "--rados-pool", ceph.pool,
                    "--rados-namespace", namespace, "--scrub-interval", "off"])
                v.call("lun.create", name="r", size=size, raid=0)
                targets["vsand-rados"] = Target("vsand-rados", "vsand", uri=v.uri("r"))
            if BASE in names:
                uri = srv.qemu_nbd(ceph.rbd_image(image, size), os.path.join(work, "qemu.sock"),
                                   args.qemu_cache)
                targets[BASE] = Target(BASE, "rbd", uri=uri)
            measure(targets, res, jobs, ["warm"] if jobs else [], flush, size, args.runtime,
                    args.rounds)
            res["takeover"] = measure_takeover(ceph, work)
            res["cluster_rss_mib"] = ceph.rss_mib()
    except (RuntimeError, ControlError) as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        try:
            ceph.cleanup(image, namespace)
        finally:
            ceph.purge()
            shutil.rmtree(work, ignore_errors=True)
    res["elapsed_s"] = time.monotonic() - t0
    where = (f"throw-away cluster: {args.osds} bluestore OSD(s), pool size {args.osds}, up in "
             f"{res['cluster_up_s']:.1f} s; " if not args.conf else f"cluster {args.conf}; ")
    rss = ", ".join(f"{k} {v}" for k, v in res["cluster_rss_mib"].items())
    print_results(res, args, list(targets), where,
                  [f"cluster RSS at the end (MiB): {rss}"] if rss else [], BASE)
    print("\n" + report_takeover(res["takeover"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
