"""The Linux kernel's side of vsand.

* nbd-client 3.24 (the kernel client's userspace half): `-l` lists the exports;
  `nbd-client HOST PORT /dev/nbd0 -N NAME` performs the whole GO handshake and prints
  the size before it needs nbd.ko, so the handshake is tested even where the module
  is missing (NBD-NOTES §2.1). With nbd.ko present a real /dev/nbd0 test runs.
* The kernel block and filesystem path without nbd.ko: nbdfuse exposes the LUN as a
  FUSE file, a loop device turns it into a block device, then mkfs.ext4, mount,
  copy a tree, umount, `e2fsck -fn`; the daemon is stopped (SIGTERM, exit 0) and
  started again, and a read-only mount must show every file with its checksum.

Only loopback addresses are used. Everything mounted or attached is undone in
finally blocks.
"""

from __future__ import annotations

import os
import random
import re
import time

import pytest

from blockstack import Stack, e2fsck_clean, need_kernel_path, tree_sums, write_file
from conftest import daemon_for, healthy, need, run

MiB = 1 << 20


def have_nbd_module() -> bool:
    return os.path.isdir("/sys/module/nbd")


# ---- nbd-client --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def luns(daemon):
    want = {"kp-a": (96 * MiB, 0), "kp-b": (1 << 30, 1), "kp-c": (160 * MiB, 5)}
    for name, (size, raid) in want.items():
        daemon.ctl("lun.create", name=name, size=size, raid=raid)
    return want


DESC = {96 * MiB: "96 MiB", 1 << 30: "1 GiB", 160 * MiB: "160 MiB"}


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_nbd_client_lists_exports(daemon, luns, transport):
    need("nbd-client")
    where = ["127.0.0.1", str(daemon.port)] if transport == "tcp" else ["-u", daemon.sock]
    r = run(["nbd-client", "-l", *where], timeout=30)
    lines = r.stdout.splitlines()
    assert lines and lines[0].startswith("Negotiation: "), r.stdout
    listed = dict(ln.split(": ", 1) for ln in lines[1:] if ": " in ln)
    every = {i["name"] for i in daemon.ctl("lun.list")}
    assert set(listed) == every, (listed, every)
    for name, (size, raid) in luns.items():
        assert listed[name] == f"{DESC[size]} RAID{raid}", listed
    # nbd-client sends ABORT and leaves without reading the ACK: no error, no connection left
    healthy(daemon)
    deadline = time.monotonic() + 5
    while daemon.ctl("status")["connections"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.ctl("status")["connections"] == 0


@pytest.mark.skipif(have_nbd_module(), reason="nbd.ko is loaded: the real /dev/nbd0 test covers this")
@pytest.mark.parametrize("transport", ["tcp", "unix"])
@pytest.mark.parametrize("extra", [[], ["-C", "2"], ["-g"]], ids=["go", "go-2conns", "export-name"])
def test_nbd_client_handshake_without_module(daemon, luns, transport, extra):
    """GO (or EXPORT_NAME with -g) succeeds and nbd-client prints the size; it then
    fails for lack of nbd.ko. -C 2 negotiates twice (it needs CAN_MULTI_CONN)."""
    need("nbd-client")
    where = ["127.0.0.1", str(daemon.port)] if transport == "tcp" else ["-u", daemon.sock]
    for name, (size, _) in luns.items():
        r = run(["nbd-client", *where, "/dev/nbd0", "-N", name, *extra], check=False, timeout=30)
        out = r.stdout + r.stderr
        sizes = re.findall(r"size = (\d+)MB", out)
        assert sizes == [str(size >> 20)] * (2 if extra == ["-C", "2"] else 1), out
        assert "Server said" not in out and "Unknown reply" not in out, out
        assert r.returncode != 0        # no nbd.ko: "Couldn't resolve the nbd netlink family"
    # an unknown export: the server's error message is shown and no size
    r = run(["nbd-client", *where, "/dev/nbd0", "-N", "no-such-lun"], check=False, timeout=30)
    out = r.stdout + r.stderr
    if extra != ["-g"]:
        assert "no export named 'no-such-lun'" in out and "size =" not in out, out
    else:
        assert "size =" not in out, out
    assert r.returncode != 0
    healthy(daemon)


# ---- file trees -----------------------------------------------------------------------------------
def make_tree(root, seed: int = 1) -> dict[str, str]:
    """A few hundred small files in nested directories and a few MiB-sized ones;
    returns {relative path: sha256}."""
    r = random.Random(seed)
    sums = {}
    for i in range(300):
        rel = os.path.join(f"d{i % 7}", f"s{i % 3}", f"f{i:03d}.bin")
        data = r.randbytes(r.choice([0, 1, 100, 511, 512, 4095, 4096, 4097, r.randrange(1, 20000)]))
        sums[rel] = write_file(root, rel, data)
    for i, n in enumerate((3 * MiB, 5 * MiB + 123, 2 * MiB - 1)):
        sums[f"big/b{i}.bin"] = write_file(root, f"big/b{i}.bin", r.randbytes(n))
    sums["big/zeros.bin"] = write_file(root, "big/zeros.bin", bytes(2 * MiB))
    return sums




# ---- nbdfuse + loop + ext4 -----------------------------------------------------------------------
@pytest.mark.parametrize("raid,io", [(5, "buffered"), (1, "buffered"), (0, "buffered"), (5, "direct")])
def test_ext4_over_nbdfuse_loop_survives_restart(request, tmp_path, raid, io):
    need_kernel_path()
    daemon = daemon_for(request, io)
    name = f"kp-fs-r{raid}"
    daemon.ctl("lun.create", name=name, size=256 * MiB, raid=raid)
    src = tmp_path / "src"
    want = make_tree(src, seed=raid)

    # write: mkfs (discards the whole device first), mount, copy, umount, fsck
    st = Stack(str(tmp_path / "rw"), daemon.uri(name))
    try:
        st.attach()
        st.mkfs()
        st.mount()
        run(["cp", "-a", str(src) + "/.", st.mnt])
        run(["sync", "-f", st.mnt])
        assert tree_sums(st.mnt) == want        # through the page cache, not yet the server
        st.umount()
        e2fsck_clean(st.loop)
    finally:
        errors = st.detach()
    assert not errors, errors
    assert daemon.ctl("lun.show", name=name)["allocated"] > 10 * MiB
    healthy(daemon)

    # a clean stop and start on the same state directory
    rc = daemon.stop()
    assert rc == 0, f"daemon exit {rc}:\n{daemon.read_log()}"
    daemon.start()

    # read back through a fresh, read-only stack: every file, every byte
    st = Stack(str(tmp_path / "ro"), daemon.uri(name), ro=True)
    try:
        loop = st.attach()
        e2fsck_clean(loop)
        st.mount()
        got = tree_sums(st.mnt)
        st.umount()
        e2fsck_clean(loop)
    finally:
        errors = st.detach()
    assert not errors, errors
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    bad = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    assert not (missing or extra or bad), f"missing {missing[:5]} extra {extra[:5]} corrupt {bad[:5]}"
    healthy(daemon)


# ---- the real kernel client ------------------------------------------------------------------------
@pytest.mark.skipif(not have_nbd_module(), reason="nbd.ko is not loaded (/sys/module/nbd missing)")
@pytest.mark.parametrize("conns", [1, 2])
def test_real_nbd0_ext4(daemon, tmp_path, conns):
    """nbd-client + nbd.ko: mkfs.ext4, mount, copy, umount, e2fsck, disconnect; then
    reconnect and verify every file."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    need("nbd-client", "mkfs.ext4", "e2fsck", "mount", "umount")
    dev = "/dev/nbd0"
    if not os.path.exists(dev):
        pytest.skip(f"{dev} does not exist")
    if int(open("/sys/block/nbd0/size").read().strip() or 0):
        pytest.skip(f"{dev} is in use")
    name = f"kp-nbd0-{conns}"
    daemon.ctl("lun.create", name=name, size=256 * MiB, raid=5)
    src = tmp_path / "src"
    want = make_tree(src, seed=conns)
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def connect():
        r = run(["nbd-client", "127.0.0.1", str(daemon.port), dev, "-N", name, "-C", str(conns)], timeout=60)
        assert f"size = {256}MB" in r.stdout + r.stderr
        deadline = time.monotonic() + 30
        while int(open("/sys/block/nbd0/size").read()) * 512 != 256 * MiB:
            assert time.monotonic() < deadline, "nbd0 never got its size"
            time.sleep(0.1)

    mounted = False
    try:
        connect()
        run(["mkfs.ext4", "-q", "-F", dev])
        run(["mount", "-t", "ext4", dev, str(mnt)])
        mounted = True
        run(["cp", "-a", str(src) + "/.", str(mnt)])
        run(["umount", str(mnt)])
        mounted = False
        e2fsck_clean(dev)
        run(["nbd-client", "-d", dev], timeout=60)
        deadline = time.monotonic() + 30
        while int(open("/sys/block/nbd0/size").read()):
            assert time.monotonic() < deadline, "nbd0 did not disconnect"
            time.sleep(0.1)
        connect()
        run(["mount", "-o", "ro", "-t", "ext4", dev, str(mnt)])
        mounted = True
        assert tree_sums(mnt) == want
        run(["umount", str(mnt)])
        mounted = False
    finally:
        if mounted:
            run(["umount", "-l", str(mnt)], check=False)
        run(["nbd-client", "-d", dev], check=False, timeout=60)
    healthy(daemon)
