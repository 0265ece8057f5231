"""Typed errors shared by the storage layers.

Every error carries an errno so that the one place that turns storage errors into
protocol or CLI answers (server/, control/) needs no knowledge of the layer that
raised it.
"""

from __future__ import annotations

import errno as _errno


class VsanError(Exception):
    """Base class; ``errno`` tells what a client should be told."""

    errno = _errno.EIO

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(VsanError):
    errno = _errno.EINVAL


class OutOfRange(VsanError):
    # NBD answers out-of-range requests with EINVAL; ENOSPC is kept for a full pool.
    errno = _errno.EINVAL


class NoSpace(VsanError):
    errno = _errno.ENOSPC


class IOFailure(VsanError):
    errno = _errno.EIO


class NotFound(VsanError):
    errno = _errno.ENOENT


class Exists(VsanError):
    errno = _errno.EEXIST


class ReadOnly(VsanError):
    errno = _errno.EPERM


class Corrupt(VsanError):
    """On-disk metadata failed a checksum or a consistency rule."""

    errno = _errno.EIO


class Busy(VsanError):
    """Something (a drive, a state directory) is in use by another process."""

    errno = _errno.EBUSY


class PoolReadOnly(VsanError):
    """A metadata write failed and could not be repaired: the pool takes no more
    changes until the daemon restarts (and checks it)."""

    errno = _errno.EROFS


class Degraded(VsanError):
    """Start-up refused: drives are missing or unusable and redundancy cannot cover
    what they hold."""

    errno = _errno.ENODEV


class Unsupported(VsanError):
    """A setting the drive or the OS cannot honour (direct I/O where O_DIRECT is
    refused): the setting must change, the drive itself is not at fault."""

    errno = _errno.EOPNOTSUPP


class HalfCreated(VsanError):
    """Drives carry labels of a pool whose creation never finished."""

    errno = _errno.ENODEV
