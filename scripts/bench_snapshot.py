#!/usr/bin/env python3
"""Snapshot benchmark (issue #4 acceptance). Four figures, each printed with its
target and OK / MISSED:

1. snapshot creation of a fully mapped (thick) 2 TiB LUN on sparse drives, durable
   commit included (target < 50 ms). Engine level: ``Pool.snapshot``.
2. deleting a snapshot in the middle of a chain while it owns 1 TiB (target < 1 s,
   no data copied). Engine level. The state is built with the engine's own map
   operations, no data is written: a whole-segment trim of the LUN hands its old
   allocation to the snapshot before it (copy on first write by handover), so
       X thick -> snapshot B of X -> trim all of X   leaves B owning everything.
   Two cases, each with B between an older snapshot A and the LUN X:
     free:     A owns its own copy of every segment (A was taken and X trimmed and
               re-provisioned before B was taken), so deleting B frees 1 TiB;
     handover: A reads everything through B, so deleting B hands 1 TiB to A.
   Ownership is checked with ``share_counts()`` before the delete; "no data
   copied" is checked by counting every RStore I/O call during the delete. The
   figure is ``delete_ld`` (both its commits) plus the next commit, which records
   the freed RStores and returns their PSEGs.
3. first 4K random writes after a snapshot (copy on first write) vs qemu-nbd on a
   qcow2 overlay of a filled base image, same run (target >= 1.0x). Daemon + fio.
4. 4K random reads of the oldest snapshot of a 100-deep chain (every read follows
   Ss through 100 successors to the LUN) vs an unshared LUN with the same data
   (target >= 0.7x). Daemon + fio.

Parts 1-2 need about 3 TiB of sparse drive images (metadata only is written) and
run in about a minute; parts 3-4 need fio, qemu-img and qemu-nbd.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vsand.control.client import ControlError, call  # noqa: E402
from vsand.disk.pool import Pool  # noqa: E402
from benchlib import fio, wait_for  # noqa: E402
from vsand.units import GiB, MiB, Units, format_size, parse_size  # noqa: E402

RIO_CALLS = ("read", "read_into", "write", "zero", "resync")


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def make_pool(workdir: str, tag: str, raw: int) -> tuple[Pool, str]:
    d = tempfile.mkdtemp(prefix=f"bench-snap-{tag}-", dir=workdir)
    drive = int(raw / 8 * 1.05) // GiB * GiB + 4 * GiB
    specs = [(os.path.join(d, f"d{i}.img"), drive, "default") for i in range(8)]
    return Pool.create(specs, Units()), d


# ---- 1. snapshot creation ---------------------------------------------------------------
def part_create(args) -> bool:
    size = parse_size(args.snap_size)
    pool, d = make_pool(args.dir, "create", size)
    try:
        t0 = time.perf_counter()
        x = pool.create_ld("lun", size, raid=0, thick=True)
        t_map = time.perf_counter() - t0
        assert x.allocated_segments() * pool.units.segment == size
        times = []
        for i in range(args.repeat):
            t0 = time.perf_counter()
            pool.snapshot("lun", f"snap{i}")
            times.append(time.perf_counter() - t0)
        assert pool.get("snap0").share_counts() == (0, size // MiB)
        worst = max(times)
        print(f"\n[1] snapshot of a fully mapped {format_size(size)} RAID0 LUN "
              f"(thick mapping took {t_map:.1f} s)")
        print(f"    {len(times)} snapshots, durable: first {times[0] * 1000:.1f} ms, median "
              f"{statistics.median(times) * 1000:.1f} ms, worst {worst * 1000:.1f} ms")
        ok = worst < 0.050
        print(f"    snapshot creation (worst of {len(times)}): {worst * 1000:.1f} ms  "
              f"target < 50 ms  {verdict(ok)}")
        pool.close()
        return ok
    finally:
        for drive in pool.drives.values():
            drive.close()
        shutil.rmtree(d, ignore_errors=True)


# ---- 2. delete in the middle of a chain ---------------------------------------------------
class IOCounter:
    """Counts RStore I/O calls (data movement) and drive-level writes."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self.calls = {n: 0 for n in RIO_CALLS}
        self.meta_bytes = 0
        self._saved: list[tuple[object, str, object]] = []

    def __enter__(self):
        rio = self.pool.rio
        for n in RIO_CALLS:
            orig = getattr(rio, n)
            self._saved.append((rio, n, orig))
            setattr(rio, n, self._wrap_call(n, orig))
        for drive in self.pool.drives.values():
            orig = drive.pwrite
            self._saved.append((drive, "pwrite", orig))
            drive.pwrite = self._wrap_pwrite(orig)
        return self

    def __exit__(self, *exc):
        for obj, n, _ in self._saved:
            delattr(obj, n)        # back to the class's method
        return False

    def _wrap_call(self, name, fn):
        def w(*a, **k):
            self.calls[name] += 1
            return fn(*a, **k)
        return w

    def _wrap_pwrite(self, fn):
        def w(off, data):
            self.meta_bytes += len(data)
            return fn(off, data)
        return w

    @property
    def data_calls(self) -> int:
        return sum(self.calls.values())


def build_middle_owner(pool: Pool, owned: int, handover: bool, tag: str) -> tuple[str, str]:
    """A <-> B <-> X with B owning ``owned`` bytes; returns (A, B)."""
    a, b, x = f"{tag}-A", f"{tag}-B", f"{tag}-X"
    lun = pool.create_ld(x, owned, raid=0, thick=True)
    pool.snapshot(x, a)
    if not handover:
        lun.trim(0, owned)              # A takes every segment over from X
        lun.provision_zeroes(0, owned)  # X gets new space of its own again
    pool.snapshot(x, b)
    lun.trim(0, owned)                  # B takes every segment over from X
    pool.flush()
    return a, b


def part_delete(args) -> bool:
    owned = parse_size(args.owned)
    nsegs = owned // MiB
    pool, d = make_pool(args.dir, "delete", 3 * owned)
    all_ok = True
    try:
        print(f"\n[2] delete a snapshot in the middle of a chain that owns {format_size(owned)}")
        for case in ("free", "handover"):
            t0 = time.perf_counter()
            a, b = build_middle_owner(pool, owned, handover=case == "handover", tag=case)
            t_build = time.perf_counter() - t0
            chain = pool.chain(b)
            names = [ld.name for ld in chain]
            counts = {ld.name: ld.share_counts() for ld in chain}
            pos = names.index(b)
            assert 0 < pos < len(names) - 1, f"{b} is not in the middle of {names}"
            assert counts[b] == (nsegs, 0), f"{b} should own every segment: {counts[b]}"
            a_before = counts[a]
            free0 = pool.allocator.free_psegs()
            with IOCounter(pool) as io:
                t0 = time.perf_counter()
                pool.delete_ld(b)
                t_del = time.perf_counter() - t0
                t0 = time.perf_counter()
                pool.flush()              # records the freed RStores, returns their PSEGs
                t_next = time.perf_counter() - t0
            freed = (pool.allocator.free_psegs() - free0) * pool.units.pseg
            a_after = pool.get(a).share_counts()
            total = t_del + t_next
            ok = total < 1.0 and io.data_calls == 0
            all_ok &= ok
            chain_txt = " <-> ".join(f"{n}{' (deleted)' if n == b else ''}" for n in names)
            print(f"  case {case}: chain {chain_txt}; built in {t_build:.1f} s")
            print(f"    before: {b} owns {counts[b][0]} segments, {a} owns {a_before[0]} "
                  f"and reads {a_before[1]} through {b}")
            gained = f"{'+' if freed >= 0 else '-'}{format_size(abs(freed)) if freed else '0'}"
            print(f"    after:  {a} owns {a_after[0]} segments, reads {a_after[1]} through its "
                  f"successor; free space {gained} (checkpoint moves included)")
            print(f"    data I/O calls during the delete: {io.data_calls} "
                  f"({', '.join(f'{k}={v}' for k, v in io.calls.items())}); "
                  f"metadata written {io.meta_bytes:,} bytes")
            print(f"    delete_ld {t_del * 1000:.0f} ms + next commit {t_next * 1000:.0f} ms = "
                  f"{total * 1000:.0f} ms  target < 1 s, no data copied  {verdict(ok)}")
            for n in (a, f"{case}-X"):
                pool.delete_ld(n)
            pool.flush()
        pool.close()
        return all_ok
    finally:
        for drive in pool.drives.values():
            drive.close()
        shutil.rmtree(d, ignore_errors=True)


# ---- 3 and 4: through the daemon, with fio ---------------------------------------------------
class Procs:
    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], ready: str) -> subprocess.Popen:
        p = subprocess.Popen(cmd)
        self.procs.append(p)
        wait_for(ready, p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def stop_all(self) -> None:
        for p in self.procs:
            self.stop(p)


def qemu_nbd(procs: Procs, image: str, sock: str) -> subprocess.Popen:
    return procs.start(["qemu-nbd", "-f", "qcow2", "-k", sock, "-t", "--cache=writeback",
                        "--aio=threads", "--shared=8", image], sock)


def kiops(runs: list[dict]) -> str:
    return ", ".join(f"{r['iops'] / 1000:.1f}k" for r in runs)


def mean_iops(runs: list[dict]) -> float:
    return statistics.fmean(r["iops"] for r in runs)


def part_cfw(args, work: str, procs: Procs, ctl: str, nbd: str) -> bool:
    """Each round on new state (first writes only happen once): a new filled LUN
    and snapshot for vsand, a new overlay on the filled base for qemu."""
    size, rt = parse_size(args.size), args.runtime
    base = os.path.join(work, "base.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, str(size)], check=True)
    sock = os.path.join(work, "qemu-base.sock")
    p = qemu_nbd(procs, base, sock)
    fio(f"nbd+unix:///?socket={sock}", "write", "1m", 8, size, 0)
    procs.stop(p)
    vs, qm, copied = [], [], []
    for r in range(args.rounds):
        lun = f"cfw{r}"
        call(ctl, "lun.create", name=lun, size=size, raid=args.raid)
        uri = f"nbd+unix:///{lun}?socket={nbd}"
        fio(uri, "write", "1m", 8, size, 0)
        call(ctl, "snapshot.create", source=lun, name=f"{lun}-snap")
        vs.append(fio(uri, "randwrite", "4k", 32, size, rt))
        tree = {x["name"]: x for x in call(ctl, "tree", name=lun)}
        copied.append(tree[f"{lun}-snap"]["owned"])
        call(ctl, "snapshot.delete", name=f"{lun}-snap")
        call(ctl, "lun.delete", name=lun)

        overlay = os.path.join(work, f"overlay{r}.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
                        overlay], check=True)
        sock = os.path.join(work, f"qemu-overlay{r}.sock")
        p = qemu_nbd(procs, overlay, sock)
        qm.append(fio(f"nbd+unix:///?socket={sock}", "randwrite", "4k", 32, size, rt))
        procs.stop(p)
        os.unlink(overlay)

    v, q = mean_iops(vs), mean_iops(qm)
    ratio = v / q if q else 0.0
    ok = ratio >= 1.0
    print(f"\n[3] first 4K random writes after a snapshot, QD32, {args.rounds} x {rt} s over a filled "
          f"{format_size(size)} (RAID{args.raid}); each round on a new LUN + snapshot / a new overlay")
    print(f"    vsand LUN after snapshot:   {v / 1000:7.1f}k IOPS  "
          f"(rounds {kiops(vs)}; "
          f"p99 {max(x['p99_us'] for x in vs):.0f} us; {min(copied)} of {size // MiB} segments went "
          f"through copy on first write)")
    print(f"    qemu-nbd qcow2 overlay:     {q / 1000:7.1f}k IOPS  "
          f"(rounds {kiops(qm)}; "
          f"p99 {max(x['p99_us'] for x in qm):.0f} us)")
    print(f"    ratio vsand / qcow2 overlay: {ratio:.2f}x  target >= 1.0x  {verdict(ok)}")
    return ok


def part_chain(args, procs: Procs, ctl: str, nbd: str) -> bool:
    size, rt, depth = parse_size(args.size), args.runtime, args.depth
    for name in ("flat", "deep"):
        call(ctl, "lun.create", name=name, size=size, raid=args.raid)
        fio(f"nbd+unix:///{name}?socket={nbd}", "write", "1m", 8, size, 0)
    t0 = time.perf_counter()
    for i in range(depth):
        call(ctl, "snapshot.create", source="deep", name=f"deep-s{i:03d}")
    t_snaps = time.perf_counter() - t0
    tree = call(ctl, "tree", name="deep")
    oldest = tree[0]
    assert oldest["name"] == "deep-s000" and len(tree) == depth + 1, [x["name"] for x in tree]
    assert oldest["owned"] == 0 and oldest["shared"] == size // MiB, oldest
    flat, deep = [], []
    for _ in range(args.rounds):      # alternate, so a noisy neighbour hits both alike
        flat.append(fio(f"nbd+unix:///flat?socket={nbd}", "randread", "4k", 32, size, rt))
        deep.append(fio(f"nbd+unix:///{oldest['name']}?socket={nbd}", "randread", "4k", 32, size, rt))
    f, d = mean_iops(flat), mean_iops(deep)
    ratio = d / f if f else 0.0
    ok = ratio >= 0.7
    print(f"\n[4] 4K random reads, QD32, {args.rounds} x {rt} s over {format_size(size)} "
          f"(RAID{args.raid}): oldest snapshot of a {depth}-deep chain vs an unshared LUN "
          f"({depth} snapshots took {t_snaps:.1f} s)")
    print(f"    unshared LUN:                 {f / 1000:7.1f}k IOPS  "
          f"(rounds {kiops(flat)}; "
          f"p99 {max(x['p99_us'] for x in flat):.0f} us)")
    print(f"    oldest snapshot ({depth} hops):  {d / 1000:7.1f}k IOPS  "
          f"(rounds {kiops(deep)}; "
          f"p99 {max(x['p99_us'] for x in deep):.0f} us)")
    print(f"    ratio chain / unshared: {ratio:.2f}x  target >= 0.7x  {verdict(ok)}")
    return ok


def part_daemon(args, parts: set[int]) -> dict[int, bool]:
    tools = ("fio",) + (("qemu-img", "qemu-nbd") if 3 in parts else ())
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing (make test installs them as root)")
    work = tempfile.mkdtemp(prefix="bench-snap-nbd-", dir=args.dir)
    procs = Procs()
    try:
        state = os.path.join(work, "vsand")
        ctl, nbd = os.path.join(state, "control.sock"), os.path.join(state, "nbd.sock")
        procs.start([sys.executable, "-m", "vsand", "--state-dir", state, "--drives", "8",
                     "--drive-size", args.drive_size, "--listen", "none", "--log-level", "warning"],
                    ctl)
        time.sleep(0.2)
        out = {}
        if 3 in parts:
            out[3] = part_cfw(args, work, procs, ctl, nbd)
        if 4 in parts:
            out[4] = part_chain(args, procs, ctl, nbd)
        return out
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="1,2,3,4", help="which figures to measure (default 1,2,3,4)")
    ap.add_argument("--snap-size", default="2T", help="[1] size of the thick LUN snapshotted (2T)")
    ap.add_argument("--repeat", type=int, default=5, help="[1] snapshots taken, the worst is judged (5)")
    ap.add_argument("--owned", default="1T", help="[2] what the deleted snapshot owns (1T)")
    ap.add_argument("--size", default="1G", help="[3,4] area filled and then written/read (1G)")
    ap.add_argument("--runtime", type=int, default=10, help="[3,4] seconds per fio job (10)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="[3,4] runs of each fio job, alternating targets; IOPS are averaged (2)")
    ap.add_argument("--depth", type=int, default=100, help="[4] snapshots in the chain (100)")
    ap.add_argument("--raid", type=int, default=0, choices=(0, 1, 5), help="[3,4] RAID type (0)")
    ap.add_argument("--drive-size", default="4G", help="[3,4] daemon drive size (8 drives)")
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/var/tmp"),
                    help="where the sparse drive images go")
    args = ap.parse_args()
    parts = {int(p) for p in args.parts.split(",") if p.strip()}
    t_start = time.perf_counter()
    results = {}
    try:
        if 1 in parts:
            results[1] = part_create(args)
        if 2 in parts:
            results[2] = part_delete(args)
        if parts & {3, 4}:
            results.update(part_daemon(args, parts))
    except (RuntimeError, ControlError) as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 2
    missed = sorted(p for p, ok in results.items() if not ok)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; "
          + ("all targets met" if not missed else f"missed: {', '.join(f'[{p}]' for p in missed)}"))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
