"""A kernel block device without nbd.ko: nbdfuse file -> loop device -> ext4 mount."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import time

import pytest

from daemonkit import need, run

MiB = 1 << 20


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


# ---- file trees ------------------------------------------------------------------------------

def make_tree(root, seed: int) -> dict[str, str]:
    """A few hundred small files in nested directories and a few MiB-sized random
    ones; returns {relative path: sha256}."""
    r = random.Random(seed)
    sums = {}
    for i in range(300):
        rel = os.path.join(f"d{i % 6}", f"e{i % 4}", f"f{i:03d}.bin")
        sums[rel] = write_file(root, rel, r.randbytes(r.choice([0, 1, 700, 4096, 4097, r.randrange(1, 30000)])))
    for i, n in enumerate((4 * MiB, 3 * MiB + 777, 2 * MiB - 5, 6 * MiB)):
        sums[f"big/b{i}.bin"] = write_file(root, f"big/b{i}.bin", r.randbytes(n))
    return sums


def sha_file(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()



def same_tree(got: dict, want: dict, what: str) -> None:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    bad = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    assert not (missing or extra or bad), \
        f"{what}: missing {missing[:5]} extra {extra[:5]} wrong checksum {bad[:5]} " \
        f"({len(missing)}/{len(extra)}/{len(bad)})"


def mutate(mnt, want: dict, seed: int) -> dict[str, str]:
    """Changes a mounted tree in place: partial overwrites inside big files (the
    same blocks, so shared segments are written), whole rewrites, deletions and
    new files. Returns the new {path: sha256}."""
    r = random.Random(seed)
    now = dict(want)
    small = sorted(k for k in want if not k.startswith("big/"))
    for rel in ("big/b0.bin", "big/b3.bin"):              # in-place writes, no truncate
        p = os.path.join(mnt, rel)
        with open(p, "r+b") as f:
            for _ in range(6):
                f.seek(r.randrange(0, os.path.getsize(p) - 70000))
                f.write(r.randbytes(r.randrange(1, 70000)))
            f.flush()
            os.fsync(f.fileno())
        now[rel] = sha_file(p)
    for rel in r.sample(small, 40):                          # rewritten
        now[rel] = write_file(mnt, rel, r.randbytes(r.randrange(0, 20000)))
    for rel in ["big/b1.bin"] + r.sample(small, 50):         # deleted
        if rel in now:
            os.unlink(os.path.join(mnt, rel))
            del now[rel]
    for i in range(60):                                      # new
        rel = f"new{seed}/n{i % 5}/g{i:02d}.bin"
        now[rel] = write_file(mnt, rel, r.randbytes(r.randrange(1, 50000)))
    now[f"new{seed}/big.bin"] = write_file(mnt, f"new{seed}/big.bin", r.randbytes(3 * MiB + 1))
    return now
