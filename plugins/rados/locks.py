"""cls_lock exclusive locks, the assert_locked guard, and watches.

The lock is advisory (an xattr ``lock.<name>`` on the object): it only protects what is
written through a WriteOp carrying ``assert_locked``. Liveness of a holder is its watch,
as librbd's ManagedLock does it; list_watchers shows whether the holder is still there.
"""

from __future__ import annotations

import ctypes
import re
import struct
import subprocess
from ctypes import byref, c_int, c_size_t, c_uint64, c_void_p
from dataclasses import dataclass
from typing import Callable

from .clib import LOCK_FLAG_RENEW, WATCH_CB, WATCH_ERR_CB, Timeval, lib
from .errors import check, error

EXCLUSIVE = 1                       # ClsLockType::EXCLUSIVE


def _enc_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def assert_locked_input(name: str, cookie: str, tag: str = "") -> bytes:
    """cls_lock_assert_op as Ceph encodes it (cls/lock/cls_lock_ops.h): ENCODE_START(1, 1)
    = u8 version, u8 compat, u32 length; then name, u8 type, cookie, tag (u32-length strings).
    rados_lock_exclusive takes the lock with an empty tag."""
    body = _enc_str(name) + struct.pack("<B", EXCLUSIVE) + _enc_str(cookie) + _enc_str(tag)
    return struct.pack("<BBI", 1, 1, len(body)) + body


@dataclass(frozen=True)
class Locker:
    client: str                     # "client.<instance id>"
    cookie: str
    addr: str                       # what blocklist_add takes


@dataclass(frozen=True)
class Lockers:
    exclusive: bool
    tag: str
    lockers: list[Locker]


@dataclass(frozen=True)
class Watcher:
    addr: str
    client: str
    cookie: int


def _split(buf: ctypes.Array, n: int) -> list[str]:
    return [s.decode() for s in buf.raw.split(b"\0")[:n]]


class Watch:
    """A watch on one object; notifications are acked at once, then passed on."""

    def __init__(self, io, oid: str, on_notify: Callable[[bytes], None] | None,
                 on_error: Callable[[int], None] | None, timeout: int):
        self.io, self.oid = io, oid
        self.errors: list[int] = []

        def notified(arg, notify_id, handle, notifier_id, data, length):
            try:
                payload = ctypes.string_at(data, length) if length else b""
                lib().rados_notify_ack(io._h, oid.encode(), notify_id, handle, None, 0)
                if on_notify:
                    on_notify(payload)
            except Exception:           # never let an exception unwind into librados
                pass

        def failed(arg, cookie, err):
            self.errors.append(-err)
            if on_error:
                try:
                    on_error(-err)
                except Exception:
                    pass

        # the callbacks must live as long as the watch: librados calls them from its threads
        self._cbs = (WATCH_CB(notified), WATCH_ERR_CB(failed))
        cookie = c_uint64()
        check(lib().rados_watch3(io._h, oid.encode(), byref(cookie), self._cbs[0], self._cbs[1],
                                 timeout, None), f"watch {oid}")
        self.cookie = cookie.value

    def check(self) -> None:
        """Raise if the watch is broken (e.g. ENOTCONN after a disconnect)."""
        check(lib().rados_watch_check(self.io._h, self.cookie), f"watch_check {self.oid}")

    def close(self) -> None:
        if self.cookie:
            check(lib().rados_unwatch2(self.io._h, self.cookie), f"unwatch {self.oid}")
            self.cookie = 0


class LockOps:
    """Lock and watch calls of IoCtx (``_h`` is the rados_ioctx_t)."""

    _h: c_void_p

    def lock_exclusive(self, oid: str, name: str, cookie: str, desc: str = "",
                       duration: float | None = None, renew: bool = False) -> None:
        """Take (or with ``renew`` refresh) the exclusive lock; Busy if someone else holds it.
        ``duration`` is a lease in seconds, checked lazily against the OSD clock."""
        tv = None
        if duration is not None:
            tv = Timeval(int(duration), int(round((duration - int(duration)) * 1e6)))
        check(lib().rados_lock_exclusive(self._h, oid.encode(), name.encode(), cookie.encode(),
                                         desc.encode(), byref(tv) if tv else None,
                                         LOCK_FLAG_RENEW if renew else 0), f"lock {oid}")

    def unlock(self, oid: str, name: str, cookie: str) -> None:
        check(lib().rados_unlock(self._h, oid.encode(), name.encode(), cookie.encode()),
              f"unlock {oid}")

    def break_lock(self, oid: str, name: str, client: str, cookie: str) -> None:
        """Remove another client's lock (``client`` as list_lockers names it)."""
        check(lib().rados_break_lock(self._h, oid.encode(), name.encode(), client.encode(),
                                     cookie.encode()), f"break_lock {oid}")

    def list_lockers(self, oid: str, name: str) -> Lockers:
        L = lib()
        sizes = [c_size_t(0) for _ in range(4)]         # tag, clients, cookies, addrs
        bufs = [ctypes.create_string_buffer(1) for _ in range(4)]
        excl = c_int()
        for _ in range(3):          # -ERANGE fills in the sizes needed; the set may change
            ret = L.rados_list_lockers(self._h, oid.encode(), name.encode(), byref(excl),
                                       bufs[0], byref(sizes[0]), bufs[1], byref(sizes[1]),
                                       bufs[2], byref(sizes[2]), bufs[3], byref(sizes[3]))
            if ret != -34:
                break
            bufs = [ctypes.create_string_buffer(max(1, s.value)) for s in sizes]
        n = check(ret, f"list_lockers {oid}")
        tag = bufs[0].raw.split(b"\0")[0].decode() if n else ""
        lockers = [Locker(c, k, a) for c, k, a in zip(_split(bufs[1], n), _split(bufs[2], n),
                                                       _split(bufs[3], n))]
        return Lockers(bool(excl.value) if n else False, tag, lockers)

    def watch(self, oid: str, on_notify: Callable[[bytes], None] | None = None,
              on_error: Callable[[int], None] | None = None, timeout: int = 0) -> Watch:
        """Keep a watch on ``oid`` (``timeout`` 0: the OSD's osd_client_watch_timeout, 30 s)."""
        return Watch(self, oid, on_notify, on_error, timeout)

    def list_watchers(self, oid: str) -> list[Watcher]:
        """The object's watchers. Pacific's C API has no list_watchers (only the C++ one),
        so this asks the ``rados`` CLI of ceph-common, run with this client's conf and name;
        it costs a process start (32 ms measured) and is meant for takeover decisions."""
        c = self.cluster                                      # type: ignore[attr-defined]
        argv = ["rados", "-c", c.conf, "--name", c.name, "-p", self.pool,  # type: ignore[attr-defined]
                "-N", self.namespace, "listwatchers", oid]     # type: ignore[attr-defined]
        argv.insert(1, f"--rados-osd-op-timeout={max(1, int(c.timeout))}")
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=c.timeout + 10)
        except subprocess.TimeoutExpired:
            raise error(110, f"list_watchers {oid}: the rados CLI") from None
        if p.returncode != 0:
            m = re.search(r"\((\d+)\)", p.stderr)
            raise error(int(m.group(1)) if m else 5, f"list_watchers {oid} (rados CLI)")
        out = []
        for line in p.stdout.splitlines():
            m = re.match(r"watcher=(\S+) (client\.\d+) cookie=(\d+)", line.strip())
            if m:
                out.append(Watcher(m.group(1), m.group(2), int(m.group(3))))
        return out
