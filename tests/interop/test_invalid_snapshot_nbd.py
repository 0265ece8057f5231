"""An invalid snapshot over NBD (issue 10 finding 5), with the real daemon and libnbd.

In a pool with no free space, a LUN write invalidates an on-demand snapshot. Then
over NBD, with and without structured replies, every read of the snapshot fails
with EIO — also where it was a hole, which once read as zeros — and so do block
status, writes, trims and zeroing; the LUN keeps working; ``lun list`` shows the
state; a discard of the LUN gives its space back to the pool (none to the invalid
snapshot); status never shows negative free space; after a restart all of it holds.
"""

from __future__ import annotations

import json
import sys
import textwrap

from daemonkit import Daemon, healthy, run
from test_clients_libnbd import need_nbdsh, nbdsh

MiB = 1 << 20


def vsanctl(d, *args):
    return run([sys.executable, "-m", "vsand.cli.vsanctl", "--control", d.control, *args])


def fill(d, name, size):
    """Writes the LUN ``name`` a segment at a time until the pool is full."""
    script = f"""

        for k in range({size // MiB}):
            try:
                h.pwrite(b"\\x33" * {MiB}, k * {MiB})
            except nbd.Error as e:
                assert e.errno == "ENOSPC", e
                break
        else:
            raise AssertionError("the pool never filled")
    """
    nbdsh(d.uri(name), script)


PROBES = textwrap.dedent("""

    size = h.get_size()
    def eio(what, fn):
        try:
            fn()
        except nbd.Error as e:
            assert e.errno == "EIO", (what, e)
        else:
            raise AssertionError(what + " succeeded on an invalid snapshot")
    for off in sorted({0, 1, 4096, MiB - 1, MiB, 2 * MiB, 3 * MiB + 7, size - 4096}):
        eio(f"read {off}", lambda: h.pread(4096, off))
        eio(f"write {off}", lambda: h.pwrite(b"x" * 4096, off))
        eio(f"trim {off}", lambda: h.trim(4096, off))
        eio(f"zero {off}", lambda: h.zero(4096, off))
        if h.can_meta_context("base:allocation"):
            eio(f"block status {off}", lambda: h.block_status(4096, off, lambda *a: 0))
""")


def test_invalid_snapshot_over_nbd(tmp_path):
    need_nbdsh()
    d = Daemon(tmp_path / "state", drives=8, drive_size="96M").start()   # 16 PSEGs a drive
    try:
        vsanctl(d, "lun", "create", "lun", "--size", "4M", "--raid", "0")
        nbdsh(d.uri("lun"), f"h.pwrite(b'\\x11' * {2 * MiB}, 0); h.flush()")   # segments 2-3: holes
        vsanctl(d, "snapshot", "create", "lun", "snap")
        vsanctl(d, "lun", "create", "filler", "--size", "512M", "--raid", "0")
        fill(d, "filler", 512 * MiB)
        nbdsh(d.uri("lun"), "h.pwrite(b'lun wins', 10); h.flush()")       # invalidates snap
        for structured in (True, False):
            opts = () if structured else ("-c", "h.set_request_structured_replies(False)")
            pre = f"assert h.get_structured_replies_negotiated() == {structured}\n"
            nbdsh(d.uri("snap"), pre + PROBES.replace("MiB", str(MiB)), *opts)
        nbdsh(d.uri("lun"), "assert h.pread(8, 10) == b'lun wins'")
        rows = {r["name"]: r for r in json.loads(vsanctl(d, "--json", "lun", "list").stdout)}
        assert rows["snap"]["state"] == "invalid" and rows["snap"]["invalid"] is True
        assert "INVALID" in vsanctl(d, "lun", "list").stdout.upper()
        # a discard of the LUN: its two segments go back to the pool, the filler takes them
        nbdsh(d.uri("lun"), f"h.trim({4 * MiB}, 0); h.flush()")
        st = json.loads(vsanctl(d, "--json", "status").stdout)
        assert st["free"] >= 0 and st["capacity"] >= st["capacity"] - st["free"] >= 0
        drives = json.loads(vsanctl(d, "--json", "drive", "list").stdout)
        assert all(x["free_psegs"] >= 0 for x in drives)
        assert rows["snap"]["allocated"] == 0
        healthy(d)
        d.stop()
        d.start()
        nbdsh(d.uri("snap"), PROBES.replace("MiB", str(MiB)))
        rows = {r["name"]: r for r in json.loads(vsanctl(d, "--json", "lun", "list").stdout)}
        assert rows["snap"]["state"] == "invalid"
        vsanctl(d, "snapshot", "delete", "snap")
        healthy(d)
    finally:
        d.stop()
