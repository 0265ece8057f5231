"""A kernel block device without nbd.ko: nbdfuse file -> loop device -> ext4 mount."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

import pytest

from daemonkit import need, run


class Stack:
    """nbdfuse file -> loop device -> mount, torn down in reverse order."""

    def __init__(self, tmp, uri: str, ro: bool = False):
        self.fusedir = os.path.join(tmp, "fuse")
        self.mnt = os.path.join(tmp, "mnt")
        os.makedirs(self.fusedir, exist_ok=True)
        os.makedirs(self.mnt, exist_ok=True)
        self.uri, self.ro = uri, ro
        self.fuse: subprocess.Popen | None = None
        self.loop: str | None = None
        self.mounted = False

    @property
    def file(self) -> str:
        return os.path.join(self.fusedir, "nbd")

    def attach(self) -> str:
        log = open(os.path.join(os.path.dirname(self.fusedir), "nbdfuse.log"), "ab")
        self.fuse = subprocess.Popen(["nbdfuse", *(["-r"] if self.ro else []), self.fusedir, self.uri],
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.file):
            assert self.fuse.poll() is None, f"nbdfuse exited {self.fuse.returncode}"
            assert time.monotonic() < deadline, "nbdfuse did not create its file"
            time.sleep(0.05)
        self.loop = run(["losetup", *(["-r"] if self.ro else []), "--find", "--show", self.file]).stdout.strip()
        assert self.loop.startswith("/dev/loop"), self.loop
        return self.loop

    def mkfs(self) -> None:
        """ext4 with every inode table and the journal written now, not lazily later."""
        run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", self.loop])

    def mount(self) -> None:
        run(["mount", *(["-o", "ro,noload"] if self.ro else []), "-t", "ext4", self.loop, self.mnt])
        self.mounted = True

    def umount(self) -> None:
        if self.mounted:
            run(["umount", self.mnt])
            self.mounted = False

    def detach(self) -> list[str]:
        """Undoes everything still set up (safe after a failure); returns the errors."""
        errors = []
        if self.mounted:
            r = run(["umount", self.mnt], check=False)
            if r.returncode:
                run(["umount", "-l", self.mnt], check=False)
                errors.append(r.stderr)
            self.mounted = False
        if self.loop:
            r = run(["losetup", "-d", self.loop], check=False)
            if r.returncode:
                errors.append(r.stderr)
            self.loop = None
        if self.fuse is not None:
            for _ in range(50):     # the loop device lets go of the file asynchronously
                r = run(["fusermount3", "-u", self.fusedir], check=False)
                if r.returncode == 0 or self.fuse.poll() is not None:
                    break
                time.sleep(0.1)
            else:
                run(["fusermount3", "-u", "-z", self.fusedir], check=False)
                errors.append(r.stderr)
            try:
                rc = self.fuse.wait(30)
            except subprocess.TimeoutExpired:
                self.fuse.kill()
                rc = self.fuse.wait()
            if rc != 0:
                errors.append(f"nbdfuse exited {rc}")
            self.fuse = None
        return errors


def need_kernel_path(*extra: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mount)")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop device support")
    need("nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount", *extra)


def e2fsck_clean(dev: str, what: str = "") -> None:
    r = run(["e2fsck", "-fn", dev], check=False)
    assert r.returncode == 0, f"e2fsck -fn on {what or dev} ({dev}) -> {r.returncode}\n{r.stdout}\n{r.stderr}"


def write_file(root, rel: str, data: bytes) -> str:
    """Writes ``root/rel`` (making its directories); returns its sha256."""
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def tree_sums(root) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path (lost+found left out)."""
    out = {}
    for d, _, files in os.walk(root):
        for fn in files:
            p = os.path.join(d, fn)
            rel = os.path.relpath(p, root)
            if not rel.startswith("lost+found"):
                with open(p, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def fresh_ext4(tmp, uri: str) -> Stack:
    """A new ext4 on the export ``uri``, mounted (nbdfuse + loop device)."""
    stack = Stack(str(tmp), uri)
    stack.attach()
    stack.mkfs()
    stack.mount()
    return stack


def remount_checked(stack: Stack, want: dict, what: str) -> None:
    """Unmounts, drops the page cache, e2fsck clean, mounts again: every file's
    sha256 as ``want`` says."""
    stack.umount()
    run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"])
    e2fsck_clean(stack.loop, what)
    stack.mount()
    assert tree_sums(stack.mnt) == want
