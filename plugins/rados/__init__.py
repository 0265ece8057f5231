"""vsand's binding to Ceph RADOS: a small ctypes layer over librados.so.2 (see README.md).

The core package ``vsand`` never imports this; a RADOS backend plugs in from here.
"""

from .aio import aio_read, aio_write
from .client import Cluster, IoCtx, WriteOp
from .clib import lib
from .errors import (Blocklisted, Busy, ObjectExists, ObjectNotFound, RadosError, TimedOut,
                     Unavailable)
from .locks import Locker, Lockers, Watch, Watcher, assert_locked_input


def available() -> str | None:
    """None when librados.so.2 loads, else the reason it does not."""
    try:
        lib()
    except Unavailable as e:
        return str(e)
    return None


__all__ = ["Cluster", "IoCtx", "WriteOp", "aio_read", "aio_write", "available", "RadosError",
           "ObjectNotFound", "ObjectExists", "Busy", "TimedOut", "Blocklisted", "Unavailable",
           "Locker", "Lockers", "Watch", "Watcher", "assert_locked_input"]
