"""Delete guards, protection and renames (issue 13) through vsanctl against a real
daemon, with real NBD clients (nbdsh) holding connections across the changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from daemonkit import Daemon, healthy, need, run, vsanctl

MiB = 1 << 20
BLOCK = 4096

# An NBD client that keeps its connection and obeys lines on stdin:
# "w OFF BYTE" writes a block of BYTE at OFF and flushes, "r OFF BYTE" reads it back
# and compares; it answers each line with "ok" or "bad ...". (libnbd: system Python.)
CLIENT = """
print("connected", flush=True)
for line in sys.stdin:
    cmd, off, b = line.split()
    off, want = int(off), bytes([int(b)]) * 4096
    try:
        if cmd == "w":
            h.pwrite(want, off)
            h.flush()
            print("ok", flush=True)
        else:
            got = h.pread(4096, off)
            print("ok" if got == want else "bad " + repr(got[:8]), flush=True)
    except Exception as e:
        print("error " + str(e).replace(chr(10), " "), flush=True)
"""


class HeldClient:
    def __init__(self, daemon, name: str):
        need("nbdsh")
        env = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))
        self.p = subprocess.Popen(["nbdsh", "-u", daemon.uri(name), "-c", CLIENT],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self.p.stdout.readline().strip() == "connected"

    def ask(self, line: str) -> str:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.stdin.close()
            self.p.wait(30)


def js(daemon, *args):
    return json.loads(vsanctl(daemon, "--json", *args).stdout)


def names(daemon) -> set:
    return {i["name"] for i in js(daemon, "lun", "list")}


def nbd_pattern(daemon, name: str, off: int, byte: int, write: bool = False, n: int = BLOCK) -> bool:
    """A fresh connection to export ``name``: writes, or checks, n bytes of ``byte``."""
    need("nbdsh")
    env = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))
    op = (f"h.pwrite(bytes([{byte}]) * {n}, {off}); h.flush()" if write else
          f"assert h.pread({n}, {off}) == bytes([{byte}]) * {n}")
    return run(["nbdsh", "-u", daemon.uri(name), "-c", op], check=False, env=env).returncode == 0


# ---- delete guards -------------------------------------------------------------------------
def test_delete_with_a_connected_client_needs_force(daemon):
    vsanctl(daemon, "lun", "create", "g-held", "--size", "64M")
    c = HeldClient(daemon, "g-held")
    try:
        assert c.ask("w 0 7") == "ok"
        r = vsanctl(daemon, "lun", "delete", "g-held", rc=1)
        assert "g-held has 1 connected NBD client(s): not deleted. --force deletes it anyway, " \
               "disconnecting the clients" in r.stderr
        assert c.ask("r 0 7") == "ok"             # refused: nothing happened to the client
        out = vsanctl(daemon, "lun", "delete", "g-held", "--force").stdout
        assert out.splitlines() == ["deleted LUN g-held", "disconnected 1 NBD client(s)"]
        assert c.ask("r 0 7") != "ok"             # its connection is gone
    finally:
        c.close()
    assert "g-held" not in names(daemon)
    assert "g-held deleted with --force: 1 client(s) disconnected" in daemon.read_log()
    healthy(daemon)


def test_delete_with_snapshots_needs_force_and_they_keep_their_data(daemon):
    vsanctl(daemon, "lun", "create", "g-m1", "--size", "64M")
    assert nbd_pattern(daemon, "g-m1", 0, 1, write=True)
    vsanctl(daemon, "snapshot", "create", "g-m1", "g-m1-s1")
    vsanctl(daemon, "snapshot", "create", "g-m1-s1", "g-m1-s1a")      # depends on the snapshot
    assert nbd_pattern(daemon, "g-m1", 0, 2, write=True)
    r = vsanctl(daemon, "lun", "delete", "g-m1", rc=1)
    assert "g-m1 has dependent(s) g-m1-s1 (snapshot): not deleted. --force deletes it anyway; " \
           "the dependents keep their data" in r.stderr
    r = vsanctl(daemon, "snapshot", "delete", "g-m1-s1", rc=1)
    assert "dependent(s) g-m1-s1a (snapshot)" in r.stderr
    assert {"g-m1", "g-m1-s1", "g-m1-s1a"} <= names(daemon)
    out = vsanctl(daemon, "lun", "delete", "g-m1", "--force").stdout
    assert out.splitlines() == ["deleted LUN g-m1", "kept with their data, their origin gone: g-m1-s1"]
    assert nbd_pattern(daemon, "g-m1-s1", 0, 1) and nbd_pattern(daemon, "g-m1-s1a", 0, 1)
    info = js(daemon, "lun", "show", "g-m1-s1")
    assert "snapshot_of" not in info and info["origin_deleted"] == "g-m1"
    # a new LUN of the old name is not the snapshot's origin
    vsanctl(daemon, "lun", "create", "g-m1", "--size", "64M")
    row = next(ln for ln in vsanctl(daemon, "lun", "list").stdout.splitlines() if ln.startswith("g-m1-s1 "))
    assert "snapshot of g-m1 (deleted)" in row
    vsanctl(daemon, "lun", "delete", "g-m1")          # nothing depends on the new one
    assert js(daemon, "lun", "show", "g-m1-s1a")["snapshot_of"] == "g-m1-s1"
    healthy(daemon)


def test_a_read_only_lun_needs_force(daemon):
    vsanctl(daemon, "lun", "create", "g-ro", "--size", "64M")
    vsanctl(daemon, "lun", "set", "g-ro", "--read-only", "on")
    r = vsanctl(daemon, "lun", "delete", "g-ro", rc=1)
    assert "g-ro is read-only: not deleted. --force deletes it anyway" in r.stderr
    assert "g-ro" in names(daemon)
    assert vsanctl(daemon, "lun", "delete", "g-ro", "--force").stdout.strip() == "deleted LUN g-ro"


def test_a_protected_ld_is_never_deleted(tmp_path):
    d = Daemon(tmp_path / "state", drives=4, drive_size="512M").start()
    try:
        vsanctl(d, "lun", "create", "p-lun", "--size", "64M", "--raid", "0")
        vsanctl(d, "snapshot", "create", "p-lun", "p-snap")
        out = vsanctl(d, "lun", "set", "p-snap", "--protect", "on").stdout
        assert "p-snap is read-write, protected" in out and "protected    yes" in out
        assert js(d, "lun", "set", "p-lun", "--protect", "on")["protected"] is True
        row = next(ln for ln in vsanctl(d, "lun", "list").stdout.splitlines() if ln.startswith("p-snap "))
        assert " rw,protected " in row
        d.stop()
        d.start()                                          # the mark is persistent
        for args in (["lun", "delete", "p-lun", "--force"], ["snapshot", "delete", "p-snap", "--force"],
                     ["lun", "delete", "p-snap"]):
            r = vsanctl(d, *args, rc=1)
            who = args[2]
            assert f"{who} is protected against deletion, even with --force; " \
                   f"`vsanctl lun set {who} --protect off` first" in r.stderr
        assert names(d) == {"p-lun", "p-snap"}
        assert js(d, "lun", "set", "p-snap", "--protect", "off")["protected"] is False
        vsanctl(d, "snapshot", "delete", "p-snap")
        assert names(d) == {"p-lun"}
        healthy(d)
    finally:
        d.stop()


@pytest.mark.snapclone
def test_the_source_of_a_copying_snapclone_is_never_deleted(daemon):
    vsanctl(daemon, "lun", "create", "g-src", "--size", "64M")
    assert nbd_pattern(daemon, "g-src", 0, 3, write=True)
    tid = js(daemon, "snapclone", "create", "g-src", "g-clone", "--rate", "1")["task"]
    r = vsanctl(daemon, "lun", "delete", "g-src", "--force", rc=1)
    assert "g-src is the source of snapclone(s) still being copied: g-clone; wait for the copy " \
           "to finish (`vsanctl task list`) or delete the snapclone(s) first" in r.stderr
    vsanctl(daemon, "task", "set", tid, "--rate", "0")
    vsanctl(daemon, "task", "wait", tid)
    r = vsanctl(daemon, "lun", "delete", "g-src", rc=1)     # the clone still names it
    assert "dependent(s) g-clone (snapclone)" in r.stderr
    vsanctl(daemon, "lun", "delete", "g-src", "--force")
    assert nbd_pattern(daemon, "g-clone", 0, 3)
    assert "snapclone of g-src (deleted)" in vsanctl(daemon, "lun", "list").stdout
    healthy(daemon)


# ---- rename ------------------------------------------------------------------------------
def test_rename_with_a_connected_client(daemon):
    vsanctl(daemon, "lun", "create", "r-old", "--size", "64M")
    vsanctl(daemon, "snapshot", "create", "r-old", "r-snap")
    c = HeldClient(daemon, "r-old")
    try:
        assert c.ask("w 0 5") == "ok"
        out = vsanctl(daemon, "lun", "rename", "r-old", "r-new").stdout
        assert out.startswith("renamed r-old to r-new\n")
        # the connection goes on, on the same disk
        assert c.ask(f"w {BLOCK} 6") == "ok" and c.ask("r 0 5") == "ok"
        assert nbd_pattern(daemon, "r-new", BLOCK, 6)              # new connections: new name
        assert not nbd_pattern(daemon, "r-old", 0, 5)
        assert js(daemon, "lun", "show", "r-new")["connections"] == 1
        r = vsanctl(daemon, "lun", "delete", "r-new", rc=1)      # its client counts under the new name
        assert "1 connected NBD client(s)" in r.stderr
        assert js(daemon, "lun", "show", "r-snap")["snapshot_of"] == "r-new"
        assert c.ask(f"r {BLOCK} 6") == "ok"
    finally:
        c.close()
    assert {"r-new", "r-snap"} <= names(daemon) and "r-old" not in names(daemon)
    vsanctl(daemon, "snapshot", "rename", "r-snap", "r-snap2")
    assert js(daemon, "tree", "r-new")[0]["name"] == "r-snap2"
    healthy(daemon)


RENAME_ERRORS = [
    (["lun", "rename", "x-a", "x-b"], "vsanctl: lun rename: logical disk 'x-b' exists"),
    (["lun", "rename", "nope", "x-c"], "vsanctl: lun rename: no logical disk named 'nope'"),
    (["lun", "rename", "x-a", "a/b"], "vsanctl: lun rename: bad LD name 'a/b' (1-255 printable characters, no '/')"),
    (["lun", "rename", "x-a", ""], "vsanctl: lun rename: bad LD name ''"),
    (["snapshot", "rename", "x-a", "x-c"], "vsanctl: snapshot rename: x-a is a LUN, not a snapshot; "
                                           "`vsanctl lun rename x-a` renames it"),
]


@pytest.mark.parametrize("args,msg", RENAME_ERRORS, ids=[" ".join(a) for a, _ in RENAME_ERRORS])
def test_rename_refusals(daemon, args, msg):
    if "x-a" not in names(daemon):
        vsanctl(daemon, "lun", "create", "x-a", "--size", "64M")
        vsanctl(daemon, "lun", "create", "x-b", "--size", "64M")
    r = vsanctl(daemon, *args, rc=1)
    assert msg in r.stderr
    assert {"x-a", "x-b"} <= names(daemon) and "x-c" not in names(daemon)


@pytest.mark.snapclone
def test_rename_is_durable_and_a_copy_follows_it(tmp_path):
    """kill -9 right after the rename returned: the name was committed; the copy task
    of the renamed clone resumes under the new name; the origin follows too."""
    d = Daemon(tmp_path / "state", drives=4, drive_size="512M").start()
    try:
        vsanctl(d, "lun", "create", "k-src", "--size", "64M", "--raid", "0")
        assert nbd_pattern(d, "k-src", 0, 9, write=True, n=32 * MiB)    # 32 s to copy at 1 MiB/s
        tid = js(d, "snapclone", "create", "k-src", "k-clone", "--rate", "1")["task"]
        vsanctl(d, "lun", "rename", "k-clone", "k-copy")
        vsanctl(d, "lun", "rename", "k-src", "k-origin")
        assert js(d, "task", "show", tid)["target"] == "k-copy"
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(30)
        d.start()
        assert names(d) == {"k-origin", "k-copy"}
        task = js(d, "task", "show", tid)
        assert task["target"] == "k-copy" and task["state"] in ("queued", "running"), task
        assert js(d, "lun", "show", "k-copy")["snapclone_of"] == "k-origin"
        vsanctl(d, "task", "set", tid, "--rate", "0")
        vsanctl(d, "task", "wait", tid)
        assert js(d, "lun", "show", "k-copy")["clone"] == "independent"
        assert nbd_pattern(d, "k-copy", 0, 9, n=32 * MiB)
        d.stop()
        d.start()                                     # and after a clean restart
        assert names(d) == {"k-origin", "k-copy"}
        healthy(d)
    finally:
        d.stop()


def test_renamed_export_list(daemon):
    """nbdinfo --list shows the new name only, at once."""
    need("nbdinfo")
    vsanctl(daemon, "lun", "create", "l-before", "--size", "64M")
    vsanctl(daemon, "lun", "rename", "l-before", "l-after")
    r = run(["nbdinfo", "--list", "--json", f"nbd+unix:///?socket={daemon.sock}"], timeout=30)
    listed = {e["export-name"] for e in json.loads(r.stdout)["exports"]}
    assert "l-after" in listed and "l-before" not in listed, listed


def test_renaming_the_default_export_warns(tmp_path):
    d = Daemon(tmp_path / "state", drives=4, drive_size="256M", extra=["--default-export", "dflt"]).start()
    try:
        vsanctl(d, "lun", "create", "dflt", "--size", "64M", "--raid", "0")
        r = vsanctl(d, "lun", "rename", "dflt", "dflt2")
        assert r.stderr == ("vsanctl: warning: dflt was the default export (config default_export): "
                            "clients asking for the empty export name get nothing until the config "
                            "names dflt2\n")
        assert r.stdout.startswith("renamed dflt to dflt2")
    finally:
        d.stop()
