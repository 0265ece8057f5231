"""Real clients on a LUN whose pool lives on RADOS: fio's nbd engine with crc32c
verification across a daemon restart, and ext4 through nbdfuse + a loop device
(mkfs, files, fsck, a restart, the files again)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from blockstack import Stack, e2fsck_clean, fresh_ext4, need_kernel_path, tree_sums, write_file
from daemonkit import need
from test_rados_lun import start

MiB = 1 << 20
SIZE = 48 * MiB


def fio(uri: str, *extra: str) -> dict:
    cmd = ["fio", "--name=vsand-rados", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
           "--bsrange=4k-128k", f"--size={SIZE}", "--iodepth=16", "--verify=crc32c",
           "--verify_fatal=1", "--verify_state_save=0", "--randseed=1515", "--fsync=32",
           "--output-format=json", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{cmd} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    assert job["error"] == 0, job
    return job


def test_fio_verify_on_a_rados_lun(tmp_path, rados_cluster, rados_ns):
    need("fio")
    if "uri" not in subprocess.run(["fio", "--enghelp=nbd"], capture_output=True, text=True).stdout:
        pytest.skip("fio was built without the nbd engine")
    d = start(tmp_path, rados_cluster, rados_ns)
    try:
        d.ctl("lun.create", name="fio", size=SIZE, raid=0)
        job = fio(d.uri("fio", tcp=True))
        assert job["write"]["io_bytes"] >= SIZE
        assert d.stop() == 0
        d.start()
        job = fio(d.uri("fio", tcp=True), "--verify_only")
        assert job["read"]["io_bytes"] >= SIZE
    finally:
        d.stop()


def test_ext4_through_nbdfuse_on_a_rados_lun(tmp_path, rados_cluster, rados_ns):
    need_kernel_path()
    d = start(tmp_path, rados_cluster, rados_ns)
    stack = None
    try:
        d.ctl("lun.create", name="fs", size=64 * MiB, raid=0)
        stack = fresh_ext4(tmp_path / "k", d.uri("fs", tcp=True))
        sums = {}
        for i in range(12):
            sums[f"dir{i % 3}/f{i}"] = write_file(stack.mnt, f"dir{i % 3}/f{i}", os.urandom(97 * 1024 * (i + 1)))
        os.sync()
        stack.umount()
        e2fsck_clean(stack.loop, "the RADOS LUN")
        assert stack.detach() == []
        stack = None
        assert d.stop() == 0
        d.start()
        stack = Stack(str(tmp_path / "k2"), d.uri("fs", tcp=True))
        stack.attach()
        e2fsck_clean(stack.loop, "the RADOS LUN after a restart")
        stack.mount()
        assert tree_sums(stack.mnt) == sums
    finally:
        if stack is not None:
            stack.detach()
        d.stop()
