"""`vsanctl lun revert` against a REAL daemon.

* ext4 (nbdfuse + loop): a LUN gets a file tree, is unmounted and snapshotted (s1),
  changed and snapshotted again (s2), changed again and left mounted. The revert is
  refused while it is mounted; unmounted, it is reverted to the OLDER s1 keeping its
  state before as a snapshot. The LUN then holds s1's files by checksum, s2 and the
  kept snapshot theirs, e2fsck is clean on each. The LUN is changed after the revert
  (s1 unchanged), then reverted to s2, which now stands after it in the chain, without
  keeping anything; a restart finds every LD as it was.
* On the way, scripts/backup_diff.py brings a full backup of s1 to s2, then (the
  chain reordered by the revert) to the changed LUN, each byte for byte.
* The control plane with qemu-io data: every refusal is one line and changes
  nothing; --force drops a held client; a kill -9 right after a revert finds it done.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess

import pytest

from blockstack import Stack, e2fsck_clean, make_tree, mutate, need_kernel_path, same_tree, tree_sums
from daemonkit import ROOT, SYS_PY, Daemon, healthy, need, run
from flakydrive import qemu_io
from test_vsanctl import ctl, js

MiB = 1 << 20


def chain(daemon, name: str) -> list[str]:
    return [r["name"] for r in daemon.ctl("tree", name=name)]


def incremental(daemon, tmp, newer: str, since: str, backup) -> int:
    """scripts/backup_diff.py: BACKUP (holding SINCE) is brought to NEWER; the bytes copied."""
    r = subprocess.run([SYS_PY, os.path.join(ROOT, "scripts", "backup_diff.py"), daemon.uri(newer),
                        since, str(backup), "--json"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", "")))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["copied"]


def file_sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def export_sha(daemon, name: str) -> str:
    """sha256 of a whole export, read by nbdcopy."""
    r = subprocess.run(["nbdcopy", daemon.uri(name), "-"], capture_output=True, timeout=120, check=True)
    return hashlib.sha256(r.stdout).hexdigest()


def test_ext4_revert_to_any_snapshot(tmp_path):
    need_kernel_path()
    need("nbdcopy")
    if subprocess.run([SYS_PY, "-c", "import nbd"], capture_output=True).returncode:
        pytest.skip("python3-libnbd is not installed")
    d = Daemon(tmp_path / "state").start()
    lun = "fs"
    stacks = []

    def stack(sub, name, ro=False):
        st = Stack(tmp_path / sub, d.uri(name), ro=ro)
        stacks.append(st)
        return st

    def check(name, want, sub):
        st = stack(sub, name, ro=True)
        e2fsck_clean(st.attach(), name)
        st.mount()
        same_tree(tree_sums(st.mnt), want, name)
        assert not st.detach()

    try:
        ctl(d, "lun", "create", lun, "--size", "128M")
        rw = stack("rw", lun)
        rw.attach()
        rw.mkfs()
        rw.mount()
        v1 = make_tree(rw.mnt, seed=21)
        rw.umount()
        ctl(d, "snapshot", "create", lun, "s1")
        rw.mount()
        v2 = mutate(rw.mnt, v1, seed=22)
        rw.umount()
        ctl(d, "snapshot", "create", lun, "s2")
        rw.mount()
        v3 = mutate(rw.mnt, v2, seed=23)
        run(["sync", "-f", rw.mnt])
        # mounted: refused, nothing changes
        r = ctl(d, "lun", "revert", lun, "--to", "s1", rc=1)
        assert f"{lun} has 4 connected client(s)" in r.stderr and "--force" in r.stderr, r.stderr   # nbdfuse: 4
        assert chain(d, lun) == ["s1", "s2", lun]
        rw.umount()
        e2fsck_clean(rw.loop, "the LUN before the revert")
        assert not rw.detach()

        # an incremental backup from s1 to s2 through the changed-blocks context
        backup = tmp_path / "backup.img"
        run(["nbdcopy", d.uri("s1"), str(backup)])
        copied = incremental(d, tmp_path, "s2", "s1", backup)
        assert file_sha(backup) == export_sha(d, "s2") and 0 < copied < 128 * MiB // 2, copied

        out = ctl(d, "lun", "revert", lun, "--to", "s1", "--keep", "before").stdout
        assert f"reverted LUN {lun} to s1 (its state before: kept as snapshot before)" in out, out
        assert chain(d, lun) == ["s1", lun, "s2", "before"]
        assert js(d, "lun", "show", "before")["snapshot_of"] == lun
        for i, (name, want) in enumerate(((lun, v1), ("s1", v1), ("s2", v2), ("before", v3))):
            check(name, want, f"ro{i}")

        # the reverted LUN is an ordinary disk: change it, s1 stays
        rw = stack("rw2", lun)
        rw.attach()
        rw.mount()
        v4 = mutate(rw.mnt, v1, seed=24)
        rw.umount()
        e2fsck_clean(rw.loop, "the reverted LUN after changes")
        assert not rw.detach()
        check("s1", v1, "ro-s1")
        # diffs in a reordered chain: the backup (s2) brought to the reverted LUN
        incremental(d, tmp_path, lun, "s2", backup)
        assert file_sha(backup) == export_sha(d, lun)

        # to s2, which stands after the LUN now; the state before (v4) is dropped
        out = ctl(d, "lun", "revert", lun, "--to", "s2").stdout
        assert "(its state before: freed)" in out, out
        assert chain(d, lun) == ["s1", "s2", lun, "before"]
        check(lun, v2, "ro-lun2")
        sums = {n: export_sha(d, n) for n in (lun, "s1", "s2", "before")}
        assert sums[lun] == sums["s2"] and len(set(sums.values())) == 3 and v4 != v2   # byte for byte
        assert d.stop() == 0
        d.start()
        assert {n: export_sha(d, n) for n in sums} == sums
        assert chain(d, lun) == ["s1", "s2", lun, "before"]
        healthy(d)
    finally:
        errors = [e for st in reversed(stacks) for e in st.detach()]
        d.stop()
    assert not errors, errors


def pattern_is(daemon, name: str, byte: int, off: int = 0, n: int = 4 * MiB) -> None:
    r = qemu_io(daemon.uri(name), f"read -P {byte} {off} {n}")
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, \
        f"{name} at {off}+{n} is not {byte:#x}:\n{r.stdout}{r.stderr}"


def test_revert_refusals_force_and_kill(tmp_path):
    need("qemu-io", "nbdsh")
    d = Daemon(tmp_path / "state").start()
    try:
        ctl(d, "lun", "create", "v", "--size", "16M", "--raid", "0")
        ctl(d, "lun", "create", "other", "--size", "16M")
        for byte, snap in ((0xA1, "a"), (0xB2, "b")):
            assert qemu_io(d.uri("v"), f"write -P {byte} 0 4M").returncode == 0
            ctl(d, "snapshot", "create", "v", snap)
        ctl(d, "snapshot", "create", "other", "o1")
        assert qemu_io(d.uri("v"), "write -P 0xc3 0 4M").returncode == 0

        for args, why in (
            (("nosuch", "--to", "a"), "nosuch"),
            (("v", "--to", "nosuch"), "nosuch"),
            (("b", "--to", "a"), "b is a snapshot: only a LUN or an independent snapclone can be reverted"),
            (("v", "--to", "o1"), "o1 is not a snapshot in the chain of v (a, b)"),
            (("v", "--to", "v"), "v is not a snapshot in the chain of v"),
            (("v", "--to", "a", "--keep", "b"), "'b' exists"),
            (("v", "--to", "a", "--keep", "x/y"), "bad LD name"),
        ):
            r = ctl(d, "lun", "revert", *args, rc=1)
            assert why in r.stderr, (args, r.stderr)
        ctl(d, "lun", "revert", "v", rc=2)             # --to is required: a usage error
        assert chain(d, "v") == ["a", "b", "v"]
        pattern_is(d, "v", 0xC3)

        # protected: only with --keep (nothing freed); read-only: only with --force
        ctl(d, "lun", "set", "v", "--protect", "on", "--read-only", "on")
        r = ctl(d, "lun", "revert", "v", "--to", "a", rc=1)
        assert "v is read-only: a revert changes its data; add --force" in r.stderr, r.stderr
        r = ctl(d, "lun", "revert", "v", "--to", "a", "--force", rc=1)
        assert "v is protected: a revert would free its current data; add --keep" in r.stderr, r.stderr
        ctl(d, "lun", "set", "v", "--protect", "off", "--read-only", "off")
        pattern_is(d, "v", 0xC3)

        # a held client: refused, then dropped by --force after the revert
        env = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))
        script = ("import sys\nprint('connected', flush=True)\nsys.stdin.readline()\n"
                  "try:\n    h.pread(512, 0)\n    print('still served')\n"
                  "except Exception as e:\n    print('dropped', type(e).__name__)\n")
        p = subprocess.Popen(["nbdsh", "-u", d.uri("v"), "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert p.stdout.readline().strip() == "connected"
            r = ctl(d, "lun", "revert", "v", "--to", "a", rc=1)
            assert "v has 1 connected client(s)" in r.stderr
            pattern_is(d, "v", 0xC3)
            out = ctl(d, "lun", "revert", "v", "--to", "a", "--force").stdout
            assert "1 client(s) dropped" in out, out
            p.stdin.write("go\n")
            p.stdin.flush()
            assert p.stdout.readline().startswith("dropped"), "the held client was not dropped"
        finally:
            p.stdin.close()
            p.wait(30)
        pattern_is(d, "v", 0xA1)
        pattern_is(d, "b", 0xB2)

        # kill -9 right after a revert: it was durable when vsanctl returned
        ctl(d, "lun", "revert", "v", "--to", "b", "--keep", "was-a")
        d.stop(sig=signal.SIGKILL)
        d.start()
        assert chain(d, "v") == ["a", "was-a", "b", "v"]    # was-a stands where v stood
        assert "<chain v>" in ctl(d, "du", "v").stdout       # named after its LUN, not its end
        pattern_is(d, "v", 0xB2)
        pattern_is(d, "was-a", 0xA1)
        pattern_is(d, "a", 0xA1)
        healthy(d)
    finally:
        d.stop()


@pytest.mark.parametrize("keep", [False, True])
def test_revert_frees_or_keeps_space(tmp_path, keep):
    """Without --keep the LUN's own data since the snapshot is freed at once;
    with it, nothing is freed and nothing is copied."""
    need("qemu-io")
    d = Daemon(tmp_path / "state").start()
    try:
        ctl(d, "lun", "create", "sp", "--size", "64M", "--raid", "0")
        assert qemu_io(d.uri("sp"), "write -P 1 0 8M").returncode == 0
        ctl(d, "snapshot", "create", "sp", "s")
        assert qemu_io(d.uri("sp"), "write -P 2 0 24M").returncode == 0
        free = js(d, "status")["free"]
        before = js(d, "lun", "show", "sp")["allocated"]
        args = ["--keep", "k"] if keep else []
        ctl(d, "lun", "revert", "sp", "--to", "s", *args)
        after = js(d, "status")["free"]
        assert js(d, "lun", "show", "sp")["allocated"] == 8 * MiB      # s's 8 MiB, now the LUN's
        if keep:
            assert after == free
            assert js(d, "lun", "show", "k")["allocated"] == before
        else:
            assert after > free, (free, after)
        pattern_is(d, "sp", 1, 0, 8 * MiB)
        pattern_is(d, "sp", 0, 8 * MiB, 16 * MiB)
        healthy(d)
    finally:
        d.stop()
