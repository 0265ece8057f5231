"""Changed-block backups against the real daemon (issue 13 item 5).

* Incremental backup: a full nbdcopy of snapshot snap1, then scattered writes and
  a trim to the LUN, snapshot snap2; a libnbd client (meta context
  ``vsand:changed:snap1`` on export snap2, BLOCK_STATUS) copies only the changed
  extents into the backup file, which must equal a full nbdcopy of snap2 byte for
  byte, having copied a small part of the LUN. ``qemu-img map`` with
  ``x-dirty-bitmap=vsand:changed:snap1``, ``vsanctl diff snap2 --from snap1``
  and ``nbdinfo --map=vsand:changed:snap1`` report the same extents.
* vsanctl diff: table, --bytes, --json, and its error paths (unknown LD, LDs of
  different chains, an invalidated snapshot), one stderr line each.
* NBD negotiation: LIST with ``vsand:changed:`` lists the LDs of the export's
  chain; SET with unknown, other-chain, self and malformed names selects nothing;
  both contexts at once; REQ_ONE; a selected context whose LD is deleted answers
  EINVAL while the connection and the daemon go on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from daemonkit import ROOT, SYS_PY, Daemon, healthy, need, run
from test_clients_libnbd import SYS_ENV, need_nbdsh, nbdsh
from test_invalid_snapshot_nbd import fill

MiB = 1 << 20
LUN_SIZE = 256 * MiB

# the admin's incremental-backup tool (README, "Common tasks"): libnbd, system Python
BACKUP_DIFF = os.path.join(ROOT, "scripts", "backup_diff.py")


def vsanctl(d, *args, rc=0):
    r = subprocess.run([sys.executable, "-m", "vsand.cli.vsanctl", "--control", d.control, *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == rc, f"{args} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    if rc:
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("vsanctl: "), r.stderr
    return r


def qemu_io(d, name, *cmds):
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    r = run(args + [d.uri(name)])
    assert "error" not in r.stdout.lower() + r.stderr.lower(), r.stdout + r.stderr


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("vsand-changed")).start()
    yield d
    assert d.stop() == 0, d.read_log()


def test_incremental_backup_copies_only_what_changed(d, tmp_path):
    need_nbdsh()
    need("nbdcopy", "qemu-io", "qemu-img")
    vsanctl(d, "lun", "create", "vm", "--size", f"{LUN_SIZE // MiB}M")
    qemu_io(d, "vm", "write -P 0x11 0 40M", "write -P 0x22 100M 8M", "write -P 0x33 200M 3M")
    vsanctl(d, "snapshot", "create", "vm", "snap1")
    backup, full2 = tmp_path / "backup.img", tmp_path / "full2.img"
    run(["nbdcopy", d.uri("snap1"), str(backup)], env=SYS_ENV)
    assert os.path.getsize(backup) == LUN_SIZE
    # changes: small scattered writes, a write into a never-written area, a trim of
    # written data, a trim of never-written space (no change)
    qemu_io(d, "vm", "write -P 0x44 4097 100", "write -P 0x55 17M 64k", "write -P 0x66 150M 1M",
            "discard 34M 2M", "discard 230M 4M", "write -P 0x77 201M 512")
    vsanctl(d, "snapshot", "create", "vm", "snap2")
    qemu_io(d, "vm", "write -P 0x88 60M 1M")            # after snap2: not in its diff

    r = run([SYS_PY, BACKUP_DIFF, d.uri("snap2"), "snap1", str(backup), "--json"], env=SYS_ENV)
    inc = json.loads(r.stdout)
    MB = MiB
    want = [[0, MB], [17 * MB, MB], [34 * MB, 2 * MB], [150 * MB, MB], [201 * MB, MB]]
    assert inc["extents"] == want
    assert inc["copied"] == 6 * MB and inc["copied"] * 40 < LUN_SIZE
    run(["nbdcopy", d.uri("snap2"), str(full2)], env=SYS_ENV)
    assert backup.read_bytes() == full2.read_bytes(), "the incremental backup differs from snap2"
    print(f"incremental copied {inc['copied']} bytes of a {LUN_SIZE}-byte LUN "
          f"(full copy of snap1 allocated data: 51 MiB)")

    # vsanctl lists the same extents
    res = json.loads(vsanctl(d, "--json", "diff", "snap2", "--from", "snap1").stdout)
    assert res["extents"] == want and res["changed"] == 6 * MB and res["size"] == LUN_SIZE
    out = vsanctl(d, "diff", "snap2", "--from", "snap1").stdout
    assert "OFFSET" in out and "17 MiB" in out and "150 MiB" in out
    assert out.splitlines()[-1] == "total: 6 MiB in 5 extents of 256 MiB, snap2 since snap1"
    exact = vsanctl(d, "diff", "snap2", "--from", "snap1", "--bytes").stdout
    assert f"{17 * MB}" in exact and exact.splitlines()[-1] == \
        f"total: {6 * MB} in 5 extents of {LUN_SIZE}, snap2 since snap1"
    # the order of the two does not matter; the LUN moved on by one segment
    assert json.loads(vsanctl(d, "--json", "diff", "snap1", "--from", "snap2").stdout)["extents"] == want
    assert json.loads(vsanctl(d, "--json", "diff", "vm", "--from", "snap2").stdout)["extents"] == \
        [[60 * MB, MB]]
    # without --from: what a full backup copies
    full = json.loads(vsanctl(d, "--json", "diff", "snap1").stdout)
    assert full["extents"] == [[0, 40 * MB], [100 * MB, 8 * MB], [200 * MB, 3 * MB]]
    assert vsanctl(d, "diff", "snap1").stdout.splitlines()[-1] == \
        "total: 51 MiB in 3 extents of 256 MiB, snap1 (allocated)"

    # nbdinfo --map reads it too (offset, length, flags per line)
    r = run(["nbdinfo", "--map=vsand:changed:snap1", d.uri("snap2")], env=SYS_ENV)
    assert [[int(o), int(n)] for o, n, f, *_ in (ln.split() for ln in r.stdout.splitlines())
            if f == "1"] == want

    # qemu's x-dirty-bitmap reads the context: changed extents are "data": false
    r = run(["qemu-img", "map", "--output=json", "--image-opts",
             f"driver=nbd,server.type=unix,server.path={d.sock},export=snap2,"
             f"x-dirty-bitmap=vsand:changed:snap1"])
    rows = json.loads(r.stdout)
    assert sum(x["length"] for x in rows) == LUN_SIZE
    assert not any(x["zero"] for x in rows)
    dirty = []
    for x in rows:
        if not x["data"]:
            if dirty and dirty[-1][0] + dirty[-1][1] == x["start"]:
                dirty[-1][1] += x["length"]
            else:
                dirty.append([x["start"], x["length"]])
    assert dirty == want
    healthy(d)


def test_vsanctl_diff_errors(d):
    vsanctl(d, "lun", "create", "a", "--size", "8M")
    vsanctl(d, "lun", "create", "b", "--size", "8M")
    vsanctl(d, "snapshot", "create", "a", "a1")
    err = vsanctl(d, "diff", "nosuch", rc=1).stderr
    assert "no logical disk named 'nosuch'" in err
    err = vsanctl(d, "diff", "a", "--from", "nosuch", rc=1).stderr
    assert "no logical disk named 'nosuch'" in err
    err = vsanctl(d, "diff", "a", "--from", "b", rc=1).stderr
    assert "not in one sharing chain" in err
    err = vsanctl(d, "diff", "b", "--from", "a1", rc=1).stderr
    assert "not in one sharing chain" in err
    r = subprocess.run([sys.executable, "-m", "vsand.cli.vsanctl", "--control", d.control, "diff"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "NEWER" in r.stderr
    # nothing changed yet: no extents, a total line
    assert vsanctl(d, "diff", "a", "--from", "a1").stdout == "total: 0 B in 0 extents of 8 MiB, a since a1\n"
    healthy(d)


def test_vsanctl_diff_of_an_invalid_snapshot(tmp_path):
    need_nbdsh()
    d = Daemon(tmp_path / "state", drives=8, drive_size="96M").start()   # 16 PSEGs a drive
    try:
        vsanctl(d, "lun", "create", "lun", "--size", "4M", "--raid", "0")
        nbdsh(d.uri("lun"), f"h.pwrite(b'\\x11' * {2 * MiB}, 0); h.flush()")
        vsanctl(d, "snapshot", "create", "lun", "snap")
        vsanctl(d, "lun", "create", "filler", "--size", "512M", "--raid", "0")
        fill(d, "filler", 512 * MiB)
        nbdsh(d.uri("lun"), "h.pwrite(b'lun wins', 10); h.flush()")       # invalidates snap
        assert json.loads(vsanctl(d, "--json", "lun", "show", "snap").stdout)["state"] == "invalid"
        for args in (["snap"], ["lun", "--from", "snap"], ["snap", "--from", "lun"]):
            err = vsanctl(d, "diff", *args, rc=1).stderr
            assert "snap is invalid" in err, err
        healthy(d)
    finally:
        d.stop()


# ---- NBD negotiation and error paths ----------------------------------------------------------
def test_meta_context_negotiation(d):
    need_nbdsh()
    vsanctl(d, "lun", "create", "n", "--size", "8M")
    vsanctl(d, "lun", "create", "other", "--size", "8M")
    vsanctl(d, "snapshot", "create", "n", "n1")
    vsanctl(d, "snapshot", "create", "n", "n2")
    vsanctl(d, "snapshot", "create", "other", "o1")
    nbdsh(d.uri("n1"), "h.pwrite(b'x' * 5000, 3 << 20)")      # n1 differs from n2 and n at 3 MiB
    listing = textwrap.dedent("""
        def listed(export, *queries):
            h = nbd.NBD()
            h.set_opt_mode(True)
            h.connect_uri(f"nbd+unix:///{export}?socket={SOCK}")
            for q in queries:
                h.add_meta_context(q)
            names = []
            h.opt_list_meta_context(lambda name: names.append(name) or 0)
            h.opt_abort()
            return names
        assert listed("n", "vsand:changed:") == ["vsand:changed:n1", "vsand:changed:n2"]
        assert listed("n1", "vsand:") == ["vsand:changed:n2", "vsand:changed:n"]
        assert listed("n2") == ["base:allocation", "vsand:changed:n1", "vsand:changed:n"]
        assert listed("n", "vsand:changed:n1", "vsand:changed:o1", "vsand:changed:n",
                      "vsand:changed:nosuch", "vsand:changed", "vsand:x") == ["vsand:changed:n1"]
        assert listed("o1", "vsand:changed:") == ["vsand:changed:other"]
        assert listed("n", "qemu:", "base:") == ["base:allocation"]

        def selected(export, *queries):
            h = nbd.NBD()
            for q in queries:
                h.add_meta_context(q)
            h.connect_uri(f"nbd+unix:///{export}?socket={SOCK}")
            got = [q for q in queries if h.can_meta_context(q)]
            h.shutdown()
            return got
        bad = ("vsand:changed:nosuch", "vsand:changed:o1", "vsand:changed:n", "vsand:changed:",
               "vsand:", "vsand:changed:n1\\u00e9")
        assert selected("n", *bad) == []
        assert selected("n", "vsand:changed:n1", *bad) == ["vsand:changed:n1"]

        # BLOCK_STATUS with both contexts, and REQ_ONE
        h = nbd.NBD()
        h.add_meta_context("base:allocation")
        h.add_meta_context("vsand:changed:n1")
        h.connect_uri(f"nbd+unix:///n?socket={SOCK}")
        seen = {}
        def cb(name, off, entries, err):
            seen[name] = list(entries)
            return 0
        h.block_status(8 << 20, 0, cb)
        assert seen["vsand:changed:n1"] == [3 << 20, 0, 1 << 20, 1, 4 << 20, 0], seen
        assert seen["base:allocation"] == [8 << 20, 3], seen
        seen.clear()
        h.block_status(4 << 20, 1 << 20, cb, flags=nbd.CMD_FLAG_REQ_ONE)
        assert seen["vsand:changed:n1"] == [2 << 20, 0], seen
        seen.clear()
        h.block_status(4096, (3 << 20) + 100, cb, flags=nbd.CMD_FLAG_REQ_ONE)
        assert seen["vsand:changed:n1"] == [4096, 1], seen
        h.shutdown()
    """)
    r = run([SYS_PY, "-c", f"import nbd\nSOCK = {d.sock!r}\n" + listing], env=SYS_ENV)
    assert r.returncode == 0, r.stderr
    healthy(d)


def test_context_of_a_deleted_snapshot_and_no_context(d):
    """The LD of a selected context is deleted: BLOCK_STATUS answers EINVAL, reads
    go on. Without any context negotiated BLOCK_STATUS is refused client-side by
    libnbd and with EINVAL by the server (raw protocol: test_nbd_bad_input)."""
    need_nbdsh()
    vsanctl(d, "lun", "create", "g", "--size", "8M")
    vsanctl(d, "snapshot", "create", "g", "g1")
    script = textwrap.dedent(f"""
        import nbd, subprocess, sys
        h = nbd.NBD()
        h.add_meta_context("vsand:changed:g1")
        h.connect_uri({d.uri("g")!r})
        assert h.can_meta_context("vsand:changed:g1")
        h.block_status(4096, 0, lambda *a: 0)
        subprocess.run([{sys.executable!r}, "-m", "vsand.cli.vsanctl", "--control", {d.control!r},
                        "snapshot", "delete", "g1"], check=True, capture_output=True)
        subprocess.run([{sys.executable!r}, "-m", "vsand.cli.vsanctl", "--control", {d.control!r},
                        "snapshot", "create", "g", "g1"], check=True, capture_output=True)
        try:
            h.block_status(4096, 0, lambda *a: 0)
        except nbd.Error as e:
            assert e.errno == "EINVAL", e
        else:
            raise AssertionError("block status of a deleted snapshot's diff succeeded")
        assert h.pread(10, 0) == bytes(10)
        h.shutdown()
        h = nbd.NBD()
        h.connect_uri({d.uri("g")!r})
        try:
            h.block_status(4096, 0, lambda *a: 0)
        except nbd.Error:
            pass
        else:
            raise AssertionError("block status without a context succeeded")
        assert h.pread(10, 0) == bytes(10)
    """)
    r = run([SYS_PY, "-c", script], env=SYS_ENV)
    assert r.returncode == 0, r.stderr
    healthy(d)


def test_backup_diff_refusals(d, tmp_path):
    """scripts/backup_diff.py says what is wrong and writes nothing."""
    need_nbdsh()
    vsanctl(d, "lun", "create", "bk", "--size", "8M")
    vsanctl(d, "snapshot", "create", "bk", "bk1")
    small = tmp_path / "small.img"
    small.write_bytes(b"\x5a" * MiB)
    for args, why in ((("nosuch",), "does not offer vsand:changed:nosuch"),
                      (("bk1",), "not a full backup of it")):
        r = subprocess.run([SYS_PY, BACKUP_DIFF, d.uri("bk"), *args, str(small)], env=SYS_ENV,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and why in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert small.read_bytes() == b"\x5a" * MiB
