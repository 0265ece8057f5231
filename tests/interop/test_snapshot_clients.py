"""Snapshots seen by real clients against the REAL daemon.

* ext4: a RAID5 LUN behind nbdfuse + a loop device gets a file tree; it is
  unmounted and snapshotted, then changed (files modified in place, rewritten,
  deleted, added). A second snapshot is taken of the mounted filesystem under
  `fsfreeze`; the LUN is changed again and `fstrim`med (trims of shared segments).
  Each snapshot, mounted read-only (`ro,noload`) over its own nbdfuse + loop stack,
  must show exactly the tree of its moment with every checksum, and `e2fsck -fn`
  must be clean on every device; the LUN shows the newest tree.
* fio (nbd engine, crc32c verify): a snapshot and its source are written at the
  same time by two jobs of one fio run over overlapping, unaligned ranges; each
  verifies its own data, a later verify-only pass checks both again, and every byte
  outside a job's range still holds what was written before the snapshot (qemu-io
  `read -P`). RAID0 and RAID5.
* The chain through the control plane and qemu-io: `tree` oldest first with
  owned/shared counts after each write, `nbdinfo --list`, snapshot of a snapshot,
  writes to a middle snapshot, deleting middle snapshots, a thin 5 GiB LUN whose
  unwritten 2 GiB maps are shared through their fill value, and a SIGTERM restart
  (with the offline checker run on the stopped pool).

Everything mounted or attached is undone in finally blocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from blockstack import Stack, e2fsck_clean, make_tree, mutate, need_kernel_path, same_tree, tree_sums, write_file
from conftest import ROOT, need, run

MiB = 1 << 20


def healthy(daemon) -> None:
    assert daemon.alive(), daemon.read_log()
    assert "Traceback" not in daemon.read_log(), daemon.read_log()


def tree(daemon, name: str) -> list[tuple[str, int, int]]:
    return [(r["name"], r["owned"], r["shared"]) for r in daemon.ctl("tree", name=name)]


# ---- nbdfuse + loop + ext4 -----------------------------------------------------------------------
def test_ext4_snapshots_keep_their_moment(daemon, tmp_path):
    need_kernel_path("fsfreeze", "fstrim", "sync")
    lun, snap, frozen = "sc-fs", "sc-fs-s1", "sc-fs-s2"
    daemon.ctl("lun.create", name=lun, size=256 * MiB, raid=5)
    src = tmp_path / "src"
    v1 = make_tree(src, seed=11)

    stacks = []

    def stack(sub, name, ro=False):
        st = Stack(tmp_path / sub, daemon.uri(name), ro=ro)
        stacks.append(st)
        return st

    try:
        # v1 on the LUN; unmount (a clean fs) and snapshot it
        rw = stack("rw", lun)
        rw.attach()
        rw.mkfs()
        rw.mount()
        run(["cp", "-a", str(src) + "/.", rw.mnt])
        run(["sync", "-f", rw.mnt])
        rw.umount()
        e2fsck_clean(rw.loop, "the LUN before the snapshot")
        daemon.ctl("snapshot.create", source=lun, name=snap)
        assert [name for name, _, _ in tree(daemon, lun)] == [snap, lun]

        # v2: change the mounted LUN, then snapshot it frozen (fsfreeze, not unmounted)
        rw.mount()
        v2 = mutate(rw.mnt, v1, seed=2)
        run(["sync", "-f", rw.mnt])
        run(["fsfreeze", "-f", rw.mnt])
        try:
            daemon.ctl("snapshot.create", source=lun, name=frozen)
        finally:
            run(["fsfreeze", "-u", rw.mnt])
        # v3: change it again while both snapshots exist
        v3 = mutate(rw.mnt, v2, seed=3)
        run(["sync", "-f", rw.mnt])
        # discard the LUN's free blocks: trims of segments the snapshots still read, and of
        # an 8 MiB file written and deleted just before (whole segments: allocation drops)
        write_file(rw.mnt, "scratch.bin", os.urandom(8 * MiB))
        run(["sync", "-f", rw.mnt])
        before = daemon.ctl("lun.show", name=lun)["allocated"]
        os.unlink(os.path.join(rw.mnt, "scratch.bin"))
        run(["sync", "-f", rw.mnt])
        r = run(["fstrim", "-v", rw.mnt])
        assert "trimmed" in r.stdout, r.stdout
        assert daemon.ctl("lun.show", name=lun)["allocated"] < before
        rw.umount()
        e2fsck_clean(rw.loop, "the LUN after the changes")
        errors = rw.detach()
        assert not errors, errors
        assert [n for n, _, _ in tree(daemon, lun)] == [snap, frozen, lun]

        # every LD on its own fresh stack (cold caches: the bytes come from the daemon)
        for i, (name, want) in enumerate(((snap, v1), (frozen, v2), (lun, v3))):
            st = stack(f"ro{i}", name, ro=True)
            loop = st.attach()
            e2fsck_clean(loop, name)
            st.mount()
            same_tree(tree_sums(st.mnt), want, name)
            st.umount()
            e2fsck_clean(loop, name)
            errors = st.detach()
            assert not errors, errors
        assert v1 != v2 != v3
        assert "big/b1.bin" in v1 and "big/b1.bin" not in v2          # deleted after snap
        assert "new2/big.bin" not in v1 and "new2/big.bin" in v2      # added after snap
        assert "new3/big.bin" in v3 and "new3/big.bin" not in v2
    finally:
        errors = [e for st in reversed(stacks) for e in st.detach()]
    assert not errors, errors
    owned = {n: o for n, o, _ in tree(daemon, lun)}
    assert owned[snap] > 0 and owned[frozen] > 0, owned     # both took over old blocks
    healthy(daemon)


# ---- fio on a snapshot and its source at once ----------------------------------------------------
SIZE = 64 * MiB
# fio's ranges are not segment aligned, so the copies on first write must keep the old
# bytes around them, and they overlap: the snapshot's job writes [0.5, 32.5) MiB, the
# source's [16.25, 48.25). Before the snapshot [0, 48) holds 0xa5, [48, 56) 0x3c and
# [56, 64) 0xc3; every byte outside a job's range must still read so afterwards.
SNAP_RANGE = (MiB // 2, 32 * MiB)             # offset, size
SRC_RANGE = (16 * MiB + MiB // 4, 32 * MiB)   # offset, size


def need_fio_nbd() -> None:
    need("fio", "qemu-io", "nbdcopy")
    r = subprocess.run(["fio", "--enghelp=nbd"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0 or "uri" not in r.stdout:
        pytest.skip("fio was built without the nbd engine")


def qemu_io(uri: str, *cmds: str, ro: bool = False) -> str:
    args = ["qemu-io", "-t", "writeback", "-f", "raw"] + (["-r"] if ro else [])
    for c in cmds:
        args += ["-c", c]
    r = run(args + [uri], timeout=120)
    out = r.stdout + r.stderr
    assert "Pattern verification failed" not in out and "failed" not in out.lower(), out
    return out


def fio_jobs(jobs: dict[str, tuple[str, int, int]], *extra: str) -> dict[str, dict]:
    """One fio run with a job per {name: (uri, offset, size)}, all at once; returns
    the jobs by name."""
    cmd = ["fio", "--ioengine=nbd", "--rw=randwrite", "--bsrange=4k-128k", "--iodepth=16",
           "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json",
           *extra]
    for i, (name, (uri, off, size)) in enumerate(jobs.items()):
        cmd += [f"--name={name}", f"--uri={uri}", f"--offset={off}", f"--size={size}",
                f"--randseed={1000 + i}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{cmd} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "verify:" not in r.stderr and "bad magic" not in r.stderr, r.stderr[-3000:]
    out = json.loads(r.stdout[r.stdout.index("{"):])
    got = {j["jobname"]: j for j in out["jobs"]}
    assert set(got) == set(jobs), got.keys()
    for name, j in got.items():
        assert j["error"] == 0, j
        assert j["read"]["io_bytes"] == jobs[name][2], (name, j["read"])   # all verified
    return got


def lun_bytes(uri: str, off: int, n: int) -> bytes:
    r = subprocess.run(["nbdcopy", "--no-extents", uri, "-"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout[off:off + n]


@pytest.mark.parametrize("raid", [0, 5])
def test_fio_writes_snapshot_and_source_at_once(daemon, raid):
    need_fio_nbd()
    lun, snap = f"sc-fio{raid}", f"sc-fio{raid}-s"
    daemon.ctl("lun.create", name=lun, size=SIZE, raid=raid)
    # before the snapshot: every segment written, so fio's writes are partial copies
    # on first write in both directions
    qemu_io(daemon.uri(lun), "write -P 0xa5 0 48M", "write -P 0x3c 48M 8M", "write -P 0xc3 56M 8M",
            "flush")
    daemon.ctl("snapshot.create", source=lun, name=snap)
    n = SIZE // MiB
    assert tree(daemon, lun) == [(snap, 0, n), (lun, n, 0)]

    jobs = {"snapshot": (daemon.uri(snap), *SNAP_RANGE), "source": (daemon.uri(lun), *SRC_RANGE)}
    got = fio_jobs(jobs)
    for name, j in got.items():
        assert j["write"]["io_bytes"] == jobs[name][2]      # the random map covers its range once
    # both finished: each still holds its own data (the other job wrote concurrently)
    fio_jobs(jobs, "--verify_only")
    # what the other one wrote is not there; the bytes nobody wrote read as before, in both
    (so, sn), (lo, ln) = SNAP_RANGE, SRC_RANGE
    qemu_io(daemon.uri(snap), f"read -P 0xa5 0 {so}", f"read -P 0xa5 {so + sn} {48 * MiB - so - sn}",
            "read -P 0x3c 48M 8M", "read -P 0xc3 56M 8M", ro=True)
    qemu_io(daemon.uri(lun), f"read -P 0xa5 0 {lo}", f"read -P 0x3c {lo + ln} {56 * MiB - lo - ln}",
            "read -P 0xc3 56M 8M", ro=True)
    # the snapshot owns segments 0-32 (its writes) and 16-48 (the source's); 49-63 are shared
    assert tree(daemon, lun) == [(snap, 49, n - 49), (lun, n, 0)]
    # where both wrote, the bytes differ: the snapshot does not read the source's blocks
    a, b = (lun_bytes(daemon.uri(x), lo, so + sn - lo) for x in (snap, lun))
    assert len(a) == len(b) == so + sn - lo and a != b
    healthy(daemon)


# ---- the chain: tree, list, snapshot of a snapshot, delete in the middle, restart -----------------
CH = 32 * MiB


def test_chain_tree_list_delete_restart(daemon):
    need("qemu-io", "nbdinfo")
    lun = "sc-ch"
    s1, s2, s1a = "sc-ch-s1", "sc-ch-s2", "sc-ch-s1a"
    n = CH // MiB
    daemon.ctl("lun.create", name=lun, size=CH, raid=5)
    u = daemon.uri
    qemu_io(u(lun), "write -P 0x11 0 8M", "flush")
    assert tree(daemon, lun) == [(lun, 8, 0)]

    daemon.ctl("snapshot.create", source=lun, name=s1)
    assert tree(daemon, lun) == [(s1, 0, n), (lun, 8, 0)]
    assert tree(daemon, s1) == tree(daemon, lun)
    # a whole-segment write and a partial one over shared data, one into a hole
    qemu_io(u(lun), "write -P 0x22 0 1M", f"write -P 0x23 {MiB + 512} 4096",
            f"write -P 0x24 {20 * MiB} 4096", "flush")
    assert tree(daemon, lun) == [(s1, 2, n - 3), (lun, 9, 0)]

    daemon.ctl("snapshot.create", source=lun, name=s2)
    daemon.ctl("snapshot.create", source=s1, name=s1a)          # a snapshot of a snapshot
    assert tree(daemon, lun) == [(s1a, 0, n), (s1, 2, n - 3), (s2, 0, n), (lun, 9, 0)]
    info = daemon.ctl("lun.show", name=s1a)
    assert info["snapshot_of"] == s1 and info["predecessor"] is None and info["successor"] == s1
    qemu_io(u(lun), f"write -P 0x33 {2 * MiB} 1M", "flush")               # s2 takes segment 2
    qemu_io(u(s1), f"write -P 0x44 {3 * MiB + 100} 200", "flush")         # a middle one: s1a keeps 3
    assert tree(daemon, lun) == [(s1a, 1, n - 1), (s1, 3, n - 4), (s2, 1, n - 1), (lun, 9, 0)]

    # what each must read
    orig = ["read -P 0x11 0 8M", f"read -P 0 {8 * MiB} {CH - 8 * MiB}"]
    s1_now = ["read -P 0x11 0 3M", f"read -P 0x11 {3 * MiB} 100", f"read -P 0x44 {3 * MiB + 100} 200",
              f"read -P 0x11 {3 * MiB + 300} {5 * MiB - 300}", f"read -P 0 {8 * MiB} {CH - 8 * MiB}"]
    s2_now = ["read -P 0x22 0 1M", f"read -P 0x11 {MiB} 512", f"read -P 0x23 {MiB + 512} 4096",
              f"read -P 0x11 {MiB + 4608} {MiB - 4608}", f"read -P 0x11 {2 * MiB} 6M",
              f"read -P 0 {8 * MiB} {12 * MiB}", f"read -P 0x24 {20 * MiB} 4096",
              f"read -P 0 {20 * MiB + 4096} {CH - 20 * MiB - 4096}"]
    lun_now = s2_now[:4] + [f"read -P 0x33 {2 * MiB} 1M", f"read -P 0x11 {3 * MiB} 5M"] + s2_now[5:]

    def check_all(want: dict) -> None:
        for name, cmds in want.items():
            qemu_io(u(name), *cmds, ro=True)

    want = {s1a: orig, s1: s1_now, s2: s2_now, lun: lun_now}
    check_all(want)

    # every LD is an export, with its size
    r = run(["nbdinfo", "--list", "--json", f"nbd+unix:///?socket={daemon.sock}"], timeout=30)
    listed = {e["export-name"]: e["export-size"] for e in json.loads(r.stdout)["exports"]}
    for name in want:
        assert listed.get(name) == CH, listed

    # delete middle snapshots: what the older ones read through them is handed over
    daemon.ctl("snapshot.delete", name=s2)
    del want[s2]
    assert tree(daemon, lun) == [(s1a, 1, n - 1), (s1, 4, n - 5), (lun, 9, 0)]
    check_all(want)
    daemon.ctl("snapshot.delete", name=s1, force=True)      # s1a names it as origin
    del want[s1]
    assert tree(daemon, lun) == [(s1a, 4, n - 5), (lun, 9, 0)]
    check_all(want)
    r = run(["nbdinfo", "--list", "--json", f"nbd+unix:///?socket={daemon.sock}"], timeout=30)
    listed = {e["export-name"] for e in json.loads(r.stdout)["exports"]}
    assert s1a in listed and lun in listed and not listed & {s1, s2}, listed

    # a 5 GiB thin LUN: its second and third 2 GiB maps do not exist when the snapshots
    # are taken, so the snapshot reads them through the map's fill value
    big, t1, t2 = "sc-big", "sc-big-t1", "sc-big-t2"
    nb, k = 5 * 1024, 2048 + 5                   # segments; one in the second map
    daemon.ctl("lun.create", name=big, size=nb * MiB, raid=0)
    qemu_io(u(big), "write -P 0x61 0 2M", "flush")
    daemon.ctl("snapshot.create", source=big, name=t1)
    qemu_io(u(big), f"write -P 0x63 {k * MiB} 1M", "flush")
    daemon.ctl("snapshot.create", source=big, name=t2)
    assert tree(daemon, big) == [(t1, 0, nb - 1), (t2, 0, nb), (big, 3, 0)]
    qemu_io(u(big), f"write -P 0x64 {k * MiB + 4096} 4096", f"write -P 0x65 {(k + 4) * MiB} 4096", "flush")
    assert tree(daemon, big) == [(t1, 0, nb - 1), (t2, 1, nb - 2), (big, 4, 0)]
    zeros_k = [f"read -P 0 {(k - 1) * MiB} 6M"]
    want[t1] = ["read -P 0x61 0 2M", "read -P 0 2M 62M"] + zeros_k \
        + [f"read -P 0 {nb * MiB - 4 * MiB} 4M"]
    want[t2] = ["read -P 0x61 0 2M", f"read -P 0x63 {k * MiB} 1M", f"read -P 0 {(k + 4) * MiB} 4096"]
    want[big] = ["read -P 0x61 0 2M", f"read -P 0x63 {k * MiB} 4096", f"read -P 0x64 {k * MiB + 4096} 4096",
                 f"read -P 0x63 {k * MiB + 8192} {MiB - 8192}", f"read -P 0x65 {(k + 4) * MiB} 4096"]
    check_all(want)
    daemon.ctl("snapshot.delete", name=t2)
    del want[t2]
    assert tree(daemon, big) == [(t1, 0, nb - 2), (big, 4, 0)]
    check_all(want)

    # a clean restart: the chains, their counts and every byte survive; the pool checks clean
    before = daemon.ctl("tree", name=lun), daemon.ctl("tree", name=big)
    assert daemon.stop() == 0, daemon.read_log()
    r = run([sys.executable, "-m", "vsand", "check", daemon.state_dir], check=False, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    daemon.start()
    assert (daemon.ctl("tree", name=s1a), daemon.ctl("tree", name=t1)) == before
    check_all(want)
    # and the chain still works after the restart: a write to the LUN is a CFW again,
    # the oldest snapshot keeps its bytes
    qemu_io(u(lun), f"write -P 0x55 {4 * MiB} 4096", "flush")
    check_all(want | {lun: [f"read -P 0x55 {4 * MiB} 4096"]})
    assert tree(daemon, lun) == [(s1a, 5, n - 6), (lun, 9, 0)]
    healthy(daemon)
