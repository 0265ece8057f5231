"""Typed errors for librados calls: every failure is a RadosError carrying the errno."""

from __future__ import annotations

import errno
import os


class RadosError(OSError):
    """A librados call failed; ``errno`` is the positive error number, ``op`` the call."""

    def __init__(self, err: int, op: str):
        super().__init__(err, f"{op}: {os.strerror(err)}")
        self.op = op


class ObjectNotFound(RadosError):
    """ENOENT: no such object (or pool)."""


class ObjectExists(RadosError):
    """EEXIST."""


class Busy(RadosError):
    """EBUSY: the lock is held by another owner, or a guarded op found it not held by us."""


class TimedOut(RadosError):
    """ETIMEDOUT: an op, a mon command or the connect ran past its configured timeout."""


class Blocklisted(RadosError):
    """ESHUTDOWN: this client was blocklisted; the handle is dead and must be thrown away."""


class Unavailable(RadosError):
    """librados.so.2 (Debian's librados2) could not be loaded."""


_BY_ERRNO: dict[int, type[RadosError]] = {
    errno.ENOENT: ObjectNotFound,
    errno.EEXIST: ObjectExists,
    errno.EBUSY: Busy,
    errno.ETIMEDOUT: TimedOut,
    errno.ESHUTDOWN: Blocklisted,
}


def error(err: int, op: str) -> RadosError:
    return _BY_ERRNO.get(err, RadosError)(err, op)


def check(ret: int, op: str) -> int:
    """librados returns -errno on failure; raise the typed error, else pass ``ret`` on."""
    if ret < 0:
        raise error(-ret, op)
    return ret
