"""Exclusive access (DESIGN.md §9): one daemon owns a pool.

``flock`` locks work on image files and on block device nodes alike and vanish
with the process, so a crash never leaves a stale lock. The holder of a lock is
found in /proc/locks by the file's device and inode, so a refusal can name it.
"""

from __future__ import annotations

import fcntl
import os

from ..errors import Busy

EXCLUSIVE, SHARED = "ex", "sh"


def take(fd: int, path: str, mode: str) -> None:
    """Locks ``fd`` without waiting; Busy naming the holder when another has it."""
    op = fcntl.LOCK_EX if mode == EXCLUSIVE else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
    except BlockingIOError:
        raise Busy(f"{path} is in use by {describe(holders(fd))}") from None


def holders(fd: int) -> list[int]:
    """Pids holding a flock on the file behind ``fd`` (from /proc/locks)."""
    st = os.fstat(fd)
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    out = []
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            maj, mino, ino = parts[5].split(":")
            key = (int(maj, 16), int(mino, 16), int(ino))
            pid = int(parts[4])
        except ValueError:
            continue
        if key == want and pid != os.getpid() and pid not in out:
            out.append(pid)
    return out


def describe(pids: list[int]) -> str:
    if not pids:
        return "another process"
    return ", ".join(f"pid {p} ({command(p)})" for p in pids)


def command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    text = " ".join(argv)
    return text if len(text) <= 120 else text[:117] + "..."


class StateDirLock:
    """The daemon's lock on its state directory: ``DIR/vsand.lock`` holds its pid."""

    NAME = "vsand.lock"

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, self.NAME)
        self.fd = -1

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            take(fd, f"state directory {os.path.dirname(self.path)}", EXCLUSIVE)
        except Busy:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
