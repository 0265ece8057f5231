"""One drive: an image file (sparse, created on first start) or a block device.

I/O modes (config ``io``): ``buffered`` goes through the page cache; ``direct``
opens with O_DIRECT, so data is cached once, by the clients (DESIGN.md §13), and
any offset, length or buffer still works (direct.py); ``auto`` is direct for block
devices and buffered for image files, whose page cache is the simulated drive's
cache. A drive that refuses O_DIRECT stops the start in ``direct`` mode (the
setting cannot be honoured) and is used buffered, with a WARNING, in ``auto``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import mmap
import os
import stat
import struct
import time

from ..errors import IOFailure, InvalidArgument, Unsupported
from . import direct as dio
from . import lock as locks

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
BLKGETSIZE64 = 0x80081272
BLKZEROOUT = 0x127F
BLKSSZGET = 0x1268
# O_DIRECT alignment of an image file. The file system's own minimum is the logical
# block size of the device under it (512 or 4096) and Python 3.11 cannot ask for it
# (statx STATX_DIOALIGN); 4096 is a multiple of both and one page.
FILE_ALIGN = 4096
IO_MODES = ("buffered", "direct", "auto")
# Page-aligned, so zeros written to a direct drive need no bounce buffer.
_ZEROS = mmap.mmap(-1, 1 << 20)
log = logging.getLogger("vsand.drive")


class Drive:
    """Positional I/O on one drive. Raises IOFailure for any OS error so that upper
    layers see one error type; a drive marked ``failed`` refuses all I/O.
    ``direct``: the descriptor has O_DIRECT; ``align``: its logical block size."""

    def __init__(self, path: str, fd: int, size: int, is_block: bool, *,
                 align: int = FILE_ALIGN, direct: bool = False):
        self.path = path
        self.fd = fd
        self.size = size
        self.is_block = is_block
        self.align = align
        self.direct = direct
        self.failed = False
        # seconds a read or write may take before it counts as an I/O error (0: no
        # limit); fdatasync has none: a commit waits for the data however long
        self.timeout = 0.0
        self.dirty = True          # written since the last fdatasync that worked (or unknown)
        self._can_punch = True

    @classmethod
    def open(cls, path: str, create_size: int | None = None, lock: str | None = locks.EXCLUSIVE,
             io: str = "auto") -> "Drive":
        """Opens ``path``; a missing image file is created sparse with ``create_size``.
        ``lock``: exclusive (a pool owner), shared (the offline checker) or None;
        Busy, naming the holder, when another process holds it. ``io``: IO_MODES;
        Unsupported when ``direct`` and the drive refuses O_DIRECT."""
        if io not in IO_MODES:
            raise ValueError(f"io must be one of {IO_MODES}, not {io!r}")
        if not os.path.exists(path):
            if create_size is None:
                raise InvalidArgument(f"drive {path} does not exist")
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        else:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                raise IOFailure(f"drive {path}: {e.strerror}") from None
        if lock is not None:
            try:
                locks.take(fd, f"drive {path}", lock)
            except BaseException:
                os.close(fd)
                raise
        if create_size is not None and os.fstat(fd).st_size == 0:
            os.ftruncate(fd, create_size)
        st = os.fstat(fd)
        is_block = stat.S_ISBLK(st.st_mode)
        if is_block:
            buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
            size = struct.unpack("<Q", buf)[0]
            align = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
        else:
            size = st.st_size
            align = FILE_ALIGN
        direct = io == "direct" or (io == "auto" and is_block)
        if direct:
            try:
                # F_SETFL on the locked descriptor: a second open would need a lock of its own
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
            except OSError as e:
                if io == "direct":
                    os.close(fd)
                    raise Unsupported(f"drive {path}: direct I/O (O_DIRECT) refused: {e.strerror}; "
                                      f"set io to auto or buffered") from None
                log.warning("drive %s: direct I/O (O_DIRECT) refused (%s): using the page cache",
                            path, e.strerror)
                direct = False
        return cls(path, fd, size, is_block, align=align, direct=direct)

    def _check(self) -> None:
        if self.failed:
            raise IOFailure(f"drive {self.path} is failed")

    def _late(self, t0: float, what: str, off: int) -> None:
        """A call that returned after the timeout is an I/O error: a read's bytes are
        dropped (redundancy serves them, the error counts against the drive); a
        write did land, but a drive this slow is one to fail. A call that never
        returns is not caught here."""
        took = time.monotonic() - t0
        if self.timeout and took > self.timeout:
            raise IOFailure(f"{what} {self.path}@{off}: took {took:.1f} s, over the "
                            f"{self.timeout:g} s drive timeout")

    def pread(self, off: int, n: int) -> bytes:
        self._check()
        t0 = time.monotonic()
        if self.direct:
            buf = bytearray(n)
            self._read_direct(off, memoryview(buf))
            self._late(t0, "read", off)
            return bytes(buf)
        try:
            data = os.pread(self.fd, n, off)
        except OSError as e:
            raise IOFailure(f"read {self.path}@{off}: {e.strerror}") from e
        if len(data) < n:  # past the end of a short image: reads as zeros
            self._short(off, len(data))
            data += bytes(n - len(data))
        self._late(t0, "read", off)
        return data

    def _short(self, off: int, got: int) -> None:
        """A read ended after ``got`` bytes: past the size the drive had when opened
        it reads as zeros; before it, the drive shrank under us (an image file
        truncated): an I/O error, not zeros in place of data."""
        if off + got < self.size:
            raise IOFailure(f"read {self.path}@{off + got}: the drive ends before its "
                            f"{self.size} bytes (truncated?)")

    def readinto(self, off: int, buf: memoryview) -> None:
        """Fills ``buf`` from ``off`` without an intermediate bytes object."""
        self._check()
        t0 = time.monotonic()
        if self.direct:
            self._read_direct(off, buf)
            return self._late(t0, "read", off)
        try:
            got = os.preadv(self.fd, [buf], off)
        except OSError as e:
            raise IOFailure(f"read {self.path}@{off}: {e.strerror}") from e
        if got < len(buf):
            self._short(off, got)
            buf[got:] = bytes(len(buf) - got)
        self._late(t0, "read", off)

    def _read_direct(self, off: int, buf: memoryview) -> None:
        try:
            got = dio.read(self.fd, off, buf, self.align)
        except OSError as e:
            raise IOFailure(f"read {self.path}@{off}: {e.strerror}") from e
        if got < len(buf):
            self._short(off, got)
            buf[got:] = bytes(len(buf) - got)

    def pwrite(self, off: int, data) -> None:
        self._check()
        self.dirty = True
        t0 = time.monotonic()
        try:
            if self.direct:
                dio.write(self.fd, off, data, self.align)
            else:
                done = os.pwrite(self.fd, data, off)
                mv = memoryview(data)
                while done < len(mv):
                    done += os.pwrite(self.fd, mv[done:], off + done)
        except OSError as e:
            raise IOFailure(f"write {self.path}@{off}: {e.strerror}") from e
        self._late(t0, "write", off)

    def zero(self, off: int, n: int) -> None:
        """Makes [off, off+n) read as zeros; punches a hole where the OS can."""
        self._check()
        self.dirty = True
        if self._can_punch:
            if self.is_block:
                # BLKZEROOUT takes whole logical blocks: partial ones at the ends are written
                a = self.align
                lo, hi = -(-off // a) * a, (off + n) // a * a
                if lo >= hi:
                    return self._write_zeros(off, n)
                try:
                    fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("<QQ", lo, hi - lo))
                except OSError:
                    self._can_punch = False
                else:
                    self._write_zeros(off, lo - off)
                    return self._write_zeros(hi, off + n - hi)
            else:
                r = _libc.fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, n)
                if r == 0:
                    return
                err = ctypes.get_errno()
                if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise IOFailure(f"punch {self.path}@{off}: {os.strerror(err)}")
                self._can_punch = False
        self._write_zeros(off, n)

    def _write_zeros(self, off: int, n: int) -> None:
        while n > 0:
            k = min(n, len(_ZEROS))
            self.pwrite(off, memoryview(_ZEROS)[:k])
            off, n = off + k, n - k

    def fsync(self) -> None:
        """fdatasync, skipped when nothing was written since the last one that
        worked: a commit syncs every drive, and a FLUSH after a 4 KiB write wrote
        to one. The flag is cleared before the call, so a write that lands during
        it makes the next one sync again."""
        self._check()
        if not self.dirty:
            return
        self.dirty = False
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            self.dirty = True
            raise IOFailure(f"fsync {self.path}: {e.strerror}") from e

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def where(path: str) -> str:
    """A drive's name as the pool records it: a file or device path made absolute, a
    backend's drive URL (``scheme://...``) as it is."""
    return path if "://" in path else os.path.abspath(path)


class MissingDrive:
    """Stands in for a drive the pool expects but cannot use (missing, short,
    foreign): always failed; ``why`` says which."""

    is_block = False

    def __init__(self, path: str, size: int, why: str = "missing"):
        self.path, self.size, self.failed, self.fd, self.why = path, size, True, -1, why

    def pread(self, off, n):
        raise IOFailure(f"drive {self.path} is {self.why}")

    pwrite = zero = readinto = pread

    def fsync(self):
        raise IOFailure(f"drive {self.path} is {self.why}")

    def close(self):
        pass
