"""Snapclones seen by real clients against the REAL daemon (BGCOPY, DESIGN.md §8).

Before every clone the source is read whole with nbdcopy and its sha256 written to a
file next to the image; the clone must match that file whatever happens to the source
afterwards, while its copy runs (the task held by a per-task rate limit, so "still
copying" is asserted, not hoped for) and after it is done.

* fio (nbd engine, crc32c verify) writes and verifies half of a RAID5 source while its
  clone is copied (the task was running when fio started and still when it ended);
  then the clone matches the checksum, a verify-only pass checks the source, and the
  source's other half still holds its old bytes.
* Three snapclones of one source taken between writes (the third waits ``queued``:
  at most two tasks step at once), a snapclone of a snapshot, and a snapshot of a
  snapclone taken while it copies, then written to: `tree` while they copy and after,
  every LD byte for byte once all tasks are done, and again after the source is
  deleted; the `vsanctl tree` table.
* A clone in the middle of its copy, through qemu-img compare (against the file, and
  differing from the changed source), nbdinfo (size, and a map whose holes read as
  zeros) and nbdcopy.
* ext4 through nbdfuse + loop: a file tree on a source LUN, unmounted and snapclone'd;
  the source is mounted and changed, the clone mounted read-write while it copies
  (every file's sha256, a new file, e2fsck) and again from a fresh stack once the copy
  is done.

Every test ends with a clean stop and `vsand check --parity` on the pool.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
from blockstack import Stack, e2fsck_clean, need_kernel_path, tree_sums, write_file
from conftest import ROOT, Daemon, healthy, need, run

MiB = 1 << 20
VSANCTL = [sys.executable, "-m", "vsand.cli.vsanctl"]


@pytest.fixture
def d(tmp_path):
    dm = Daemon(tmp_path / "state", drive_size="512M").start()
    yield dm
    if dm.alive():
        dm.stop()


# ---- helpers -----------------------------------------------------------------------------------
def random_image(path, size: int, seed: int, holes=()) -> np.ndarray:
    """Random bytes with zero ranges [(off, len)] (never written: they stay holes)."""
    img = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    for off, n in holes:
        img[off:off + n] = 0
    img.tofile(str(path))
    return img


def put(d: Daemon, name: str, path) -> None:
    run(["nbdcopy", f"--request-size={MiB}", str(path), d.uri(name)], timeout=60)


def lun_bytes(d: Daemon, name: str) -> bytes:
    r = subprocess.run(["nbdcopy", "--no-extents", d.uri(name), "-"], capture_output=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return r.stdout


def sha256(data) -> str:
    return hashlib.sha256(memoryview(data)).hexdigest()


def snapshot_sha(d: Daemon, name: str, tmp, tag: str) -> str:
    """The LUN read whole now: its image in TAG.img and its sha256 in TAG.sha256."""
    data = lun_bytes(d, name)
    with open(os.path.join(tmp, f"{tag}.img"), "wb") as f:
        f.write(data)
    h = sha256(data)
    with open(os.path.join(tmp, f"{tag}.sha256"), "w") as f:
        f.write(f"{h}  {tag}.img\n")
    return h


def saved_sha(tmp, tag: str) -> str:
    with open(os.path.join(tmp, f"{tag}.sha256")) as f:
        return f.read().split()[0]


def assert_reads(d: Daemon, name: str, want_sha: str, what: str = "") -> None:
    got = lun_bytes(d, name)
    assert sha256(got) == want_sha, f"{name} {what}: sha256 {sha256(got)[:16]}..., want {want_sha[:16]}..."


def qemu_io(d: Daemon, name: str, *cmds: str) -> None:
    args = ["qemu-io", "-t", "writeback", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    out = run(args + [d.uri(name)], timeout=60)
    assert "failed" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr


def clone(d: Daemon, src: str, name: str, rate: int) -> int:
    info = d.ctl("snapclone.create", source=src, name=name, rate=rate)
    assert info["clone"] == "copying" and info["snapclone_of"] == src and info["successor"] == src, info
    return info["task"]


def running(d: Daemon, tid: int) -> dict:
    t = d.ctl("task.show", id=tid)
    assert t["state"] == "running" and t["remaining"] > 0, t
    return t


def finish(d: Daemon, *tids: int, timeout: float = 60) -> None:
    """Lifts the tasks' own limits and waits until all are done."""
    for tid in tids:
        if d.ctl("task.show", id=tid)["state"] in ("queued", "running"):
            d.ctl("task.set", id=tid, rate=0)
    deadline = time.monotonic() + timeout
    for tid in tids:
        while (t := d.ctl("task.show", id=tid))["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, t
            time.sleep(0.05)
        assert t["state"] == "done" and t["error"] == "", t
        assert d.ctl("lun.show", name=t["target"])["clone"] == "independent"


def tree_names(d: Daemon, name: str) -> list[str]:
    return [r["name"] for r in d.ctl("tree", name=name)]


def stop_and_check(d: Daemon) -> None:
    healthy(d)
    assert d.stop() == 0, d.read_log()
    r = run([sys.executable, "-m", "vsand", "check", "--parity", d.state_dir], check=False, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("clean"), r.stdout + r.stderr


# ---- fio on the source while its clone is copied --------------------------------------------------
def need_fio_nbd() -> None:
    need("fio", "nbdcopy", "qemu-io")
    r = subprocess.run(["fio", "--enghelp=nbd"], capture_output=True, text=True, timeout=30, check=False)
    if r.returncode != 0 or "uri" not in r.stdout:
        pytest.skip("fio was built without the nbd engine")


FIO_SIZE = 64 * MiB
FIO_RANGE = (8 * MiB + 4096, 32 * MiB)          # offset, size: fio's job covers this only


def fio(uri: str, *extra: str) -> dict:
    off, n = FIO_RANGE
    cmd = ["fio", "--name=src", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite", "--bsrange=4k-128k",
           f"--offset={off}", f"--size={n}", "--iodepth=16", "--verify=crc32c", "--verify_fatal=1",
           "--verify_state_save=0", "--randseed=515", "--fsync=32", "--output-format=json", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, f"{cmd} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "verify:" not in r.stderr and "bad magic" not in r.stderr, r.stderr[-3000:]
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    assert job["error"] == 0, job
    assert job["read"]["io_bytes"] == n, job["read"]      # everything written was verified
    return job


def test_fio_verify_on_the_source_while_its_clone_copies(d, tmp_path):
    need_fio_nbd()
    src, cl = "fio-src", "fio-clone"
    d.ctl("lun.create", name=src, size=FIO_SIZE, raid=5)
    base = random_image(tmp_path / "base.img", FIO_SIZE, seed=5, holes=[(40 * MiB, 8 * MiB), (56 * MiB, 8 * MiB)])
    put(d, src, tmp_path / "base.img")
    h = snapshot_sha(d, src, tmp_path, "src-at-clone")
    assert h == sha256(base)

    tid = clone(d, src, cl, rate=2)                 # ~24 s at 2 MiB/s: longer than fio
    before = running(d, tid)
    job = fio(d.uri(src))
    after = running(d, tid)                         # the copy overlapped all of fio's run
    assert job["write"]["io_bytes"] == FIO_RANGE[1]
    assert after["bytes"] >= before["bytes"]
    finish(d, tid)

    assert_reads(d, cl, saved_sha(tmp_path, "src-at-clone"), "after fio wrote its source")
    fio(d.uri(src), "--verify_only")                # the source holds what fio wrote
    now = np.frombuffer(lun_bytes(d, src), dtype=np.uint8)
    off, n = FIO_RANGE
    assert np.array_equal(now[:off], base[:off]) and np.array_equal(now[off + n:], base[off + n:]), \
        "fio's source changed outside fio's range"
    assert not np.array_equal(now[off:off + n], base[off:off + n])
    assert tree_names(d, src) == [src] and tree_names(d, cl) == [cl]
    stop_and_check(d)


# ---- several clones, a clone of a snapshot, a snapshot of a clone -------------------------------------
SZ = 48 * MiB


def vsanctl(d: Daemon, *args) -> str:
    r = run(VSANCTL + ["--control", d.control, *map(str, args)], timeout=60)
    assert r.stderr == "", r.stderr
    return r.stdout


def test_several_clones_a_clone_of_a_snapshot_and_a_snapshot_of_a_clone(d, tmp_path):
    need("nbdcopy", "qemu-io")
    m, ms = "mc", "mc-s"
    d.ctl("lun.create", name=m, size=SZ, raid=0)
    random_image(tmp_path / "base.img", SZ, seed=9, holes=[(30 * MiB, 6 * MiB)])
    put(d, m, tmp_path / "base.img")
    want = {}
    want[ms] = snapshot_sha(d, m, tmp_path, "h0")
    d.ctl("snapshot.create", source=m, name=ms)

    # c1, c2, c3 between writes that touch shared segments (partly, wholly, across a boundary)
    writes = [[f"write -P 0x11 {MiB + 100} 5000", "write -P 0x12 4M 2M", f"write -P 0x13 {31 * MiB} 4096"],
              [f"write -P 0x21 {MiB + 50_000} 3000", f"write -P 0x22 {10 * MiB - 512} 1024", "discard 20M 1M"],
              [f"write -P 0x31 {2 * MiB} 1M", f"write -P 0x32 {40 * MiB + 7} 70000"]]
    tids = {}
    for i, w in enumerate(writes, 1):
        qemu_io(d, m, *w, "flush")
        want[f"mc-c{i}"] = snapshot_sha(d, m, tmp_path, f"h{i}")
        tids[f"mc-c{i}"] = clone(d, m, f"mc-c{i}", rate=2)
    # at most two tasks step at once: the third waits its turn
    states = {n: d.ctl("task.show", id=t)["state"] for n, t in tids.items()}
    assert sorted(states.values()) == ["queued", "running", "running"], states

    tids["mc-cs"] = clone(d, ms, "mc-cs", rate=2)        # a snapclone of a snapshot
    want["mc-cs"] = want[ms]
    d.ctl("snapshot.create", source="mc-c1", name="mc-c1s")    # a snapshot of a clone that copies
    want["mc-c1s"] = want["mc-c1"]
    assert d.ctl("task.show", id=tids["mc-c1"])["state"] == "running"
    qemu_io(d, "mc-c1", "write -P 0x41 0 3M", f"write -P 0x42 {9 * MiB + 10} 10", "flush")  # the clone, written
    want["mc-c1"] = snapshot_sha(d, "mc-c1", tmp_path, "c1-written")
    qemu_io(d, m, "write -P 0x51 0 48M", "flush")        # the source, overwritten whole
    want[m] = snapshot_sha(d, m, tmp_path, "last")
    assert want["mc-c1"] != want["mc-c1s"] and len(set(want.values())) == 6, want

    chain = ["mc-cs", ms, "mc-c1s", "mc-c1", "mc-c2", "mc-c3", m]
    assert tree_names(d, m) == chain and tree_names(d, "mc-c2") == chain
    rows = {r["name"]: r for r in d.ctl("tree", name=m)}
    assert all(rows[c]["space"] == "reserve" for c in tids) and rows[m]["shared"] == 0
    for name, h in want.items():                         # right while they copy, too
        assert_reads(d, name, h, "while the clones copy")
    assert all(d.ctl("task.show", id=t)["state"] in ("queued", "running") for t in tids.values())

    finish(d, *tids.values())
    for name, h in want.items():
        assert_reads(d, name, h, "after every copy is done")
    assert tree_names(d, m) == [ms, "mc-c1s", m]         # the clones left; what was older stays
    for c in tids:
        assert tree_names(d, c) == [c], c
        info = d.ctl("lun.show", name=c)
        assert info["allocated"] > 0 and info.get("predecessor") is None and info.get("successor") is None, info

    # the source goes: the clones are independent, the snapshots get what they read through it
    d.ctl("lun.delete", name=m, force=True)      # its snapshots and clones name it
    del want[m]
    for name, h in want.items():
        assert_reads(d, name, h, f"after {m} was deleted")
    assert tree_names(d, ms) == [ms, "mc-c1s"]
    out = vsanctl(d, "tree", ms).splitlines()
    assert out[0].split()[:5] == ["LD", "(chain", "order)", "OWNED", "SHARED"], out
    assert [ln.split()[0] for ln in out[1:]] == [ms, "mc-c1s"], out
    assert all(ln.split()[-1] == "ok" for ln in out[1:]), out
    out = vsanctl(d, "tree", "mc-c2").splitlines()
    owned = d.ctl("lun.show", name="mc-c2")["allocated"] // MiB
    assert [ln.split()[0] for ln in out[1:]] == ["mc-c2"] and out[1].split()[1:3] == [str(owned), "0"], out
    assert out[1].split()[-2:] == ["lun", "ok"], out
    listing = vsanctl(d, "lun", "list")
    assert "(copying)" not in listing and "snapclone of mc" in listing, listing
    stop_and_check(d)


# ---- a clone in the middle of its copy, through real clients ------------------------------------------
def test_clone_while_copying_through_qemu_img_nbdinfo_nbdcopy(d, tmp_path):
    need("qemu-img", "nbdinfo", "nbdcopy", "qemu-io")
    src, cl = "ip-src", "ip-clone"
    size = 96 * MiB
    d.ctl("lun.create", name=src, size=size, raid=5)
    random_image(tmp_path / "base.img", size, seed=3, holes=[(16 * MiB, 16 * MiB), (80 * MiB, 16 * MiB)])
    put(d, src, tmp_path / "base.img")
    h = snapshot_sha(d, src, tmp_path, "src-at-clone")
    tid = clone(d, src, cl, rate=2)
    # the source changes at once: partial and whole segments, one hole filled, a trim
    qemu_io(d, src, *[f"write -P 0x7{k % 10} {k * MiB + 777} 4096" for k in range(0, 64, 5)],
            "write -P 0x6e 40M 3M", "write -P 0x6f 17M 1M", "discard 50M 2M", "flush")
    at = os.path.join(tmp_path, "src-at-clone.img")

    t0 = running(d, tid)
    r = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", d.uri(cl), at], check=False, timeout=60)
    assert r.returncode == 0 and "identical" in r.stdout, r.stdout + r.stderr
    r = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", d.uri(cl), d.uri(src)], check=False, timeout=60)
    assert r.returncode == 1 and "mismatch" in r.stdout.lower(), r.stdout + r.stderr   # the check can fail
    info = json.loads(run(["nbdinfo", "--json", d.uri(cl)], timeout=30).stdout)
    assert info["exports"][0]["export-size"] == size and not info["exports"][0]["is_read_only"], info
    base = np.fromfile(at, dtype=np.uint8)
    extents = json.loads(run(["nbdinfo", "--map", "--json", d.uri(cl)], timeout=30).stdout)
    assert sum(e["length"] for e in extents) == size
    zeroish = [(e["offset"], e["length"]) for e in extents if e["type"] & 2]     # NBD_STATE_ZERO
    assert zeroish, extents
    for off, n in zeroish:
        assert not base[off:off + n].any(), f"nbdinfo --map says [{off}, +{n}) reads as zeros; it does not"
    assert_reads(d, cl, h, "while copying (nbdcopy)")
    t1 = running(d, tid)                    # every check above saw a clone in mid-copy
    assert t0["done"] <= t1["done"]

    finish(d, tid)
    r = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", d.uri(cl), at], check=False, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    stop_and_check(d)


# ---- ext4 on the clone while it copies --------------------------------------------------------------


def test_ext4_on_a_clone_while_it_copies(d, tmp_path):
    need_kernel_path("sync")
    src, cl = "fs-src", "fs-clone"
    d.ctl("lun.create", name=src, size=128 * MiB, raid=5)
    rng = random.Random(17)
    stacks = []

    def stack(sub, name, ro=False):
        st = Stack(tmp_path / sub, d.uri(name), ro=ro)
        stacks.append(st)
        return st

    try:
        a = stack("a", src)
        a.attach()
        a.mkfs()
        a.mount()
        v1 = {}
        for i in range(60):
            rel = f"d{i % 4}/f{i:02d}.bin"
            v1[rel] = write_file(a.mnt, rel, rng.randbytes(rng.randrange(1, 200_000)))
        v1 |= {f"big/b{i}.bin": write_file(a.mnt, f"big/b{i}.bin", rng.randbytes(3 * MiB + i)) for i in range(3)}
        run(["sync", "-f", a.mnt])
        a.umount()
        tid = clone(d, src, cl, rate=2)                  # unmounted: a clean filesystem
        # the source goes on: files rewritten, deleted, added
        a.mount()
        for rel in list(v1)[::3]:
            write_file(a.mnt, rel, rng.randbytes(5000))
        for rel in list(v1)[1::7]:
            os.unlink(os.path.join(a.mnt, rel))
        write_file(a.mnt, "big/after.bin", rng.randbytes(4 * MiB))
        run(["sync", "-f", a.mnt])
        v2 = tree_sums(a.mnt)

        # the clone, mounted read-write while it copies
        b = stack("b", cl)
        bloop = b.attach()
        b.mount()
        got = tree_sums(b.mnt)
        assert got == v1, f"clone while copying: {sorted(set(got) ^ set(v1))[:5]} " \
                          f"{[k for k in v1 if got.get(k) not in (None, v1[k])][:5]}"
        mine = write_file(b.mnt, "clone-only.bin", rng.randbytes(MiB + 3))
        run(["sync", "-f", b.mnt])
        b.umount()
        e2fsck_clean(bloop, "the clone while it copies")
        running(d, tid)
        assert not (errors := b.detach()), errors

        finish(d, tid)
        c = stack("c", cl, ro=True)                      # a fresh stack: cold caches
        cloop = c.attach()
        e2fsck_clean(cloop, "the clone after its copy")
        c.mount()
        assert tree_sums(c.mnt) == v1 | {"clone-only.bin": mine}
        c.umount()
        assert not (errors := c.detach()), errors
        assert tree_sums(a.mnt) == v2 and v2 != v1
        a.umount()
        e2fsck_clean(a.loop, "the source")
        assert not (errors := a.detach()), errors
    finally:
        errors = [e for st in reversed(stacks) for e in st.detach()]
    assert not errors, errors
    stop_and_check(d)
