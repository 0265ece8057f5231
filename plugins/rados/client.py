"""Cluster connection and I/O context: object I/O, omap, compound write ops.

Reads have PSEG-store semantics: ``IoCtx.read`` always returns ``length`` bytes, and a
missing object or the part past an object's end reads as zeros (objects are created
lazily by the first write, as RBD does). Everything else raises a typed RadosError.
"""

from __future__ import annotations

import ctypes
import json
import math
from ctypes import byref, c_char_p, c_int, c_int64, c_size_t, c_ubyte, c_uint64, c_void_p
from dataclasses import dataclass, field

from .clib import CREATE_EXCLUSIVE, lib, take_buffer
from .errors import check
from .locks import LockOps, assert_locked_input


def _b(s: str | bytes) -> bytes:
    return s.encode() if isinstance(s, str) else s


class Cluster:
    """One librados client (``rados_t``), connected on construction.

    ``timeout`` (seconds) bounds connect (client_mount_timeout), every OSD op
    (rados_osd_op_timeout) and every mon command (rados_mon_op_timeout): librados
    waits forever by default, and a stuck cluster must turn into ETIMEDOUT errors.
    """

    def __init__(self, conf: str, name: str = "client.admin", timeout: float = 30.0,
                 options: dict[str, str] | None = None):
        self.conf, self.name, self.timeout = conf, name, timeout
        self._h = c_void_p()
        L = lib()
        check(L.rados_create2(byref(self._h), b"ceph", _b(name), 0), "rados_create2")
        try:
            check(L.rados_conf_read_file(self._h, _b(conf)), "rados_conf_read_file")
            secs = str(max(1, math.ceil(timeout))).encode()
            opts = {"rados_osd_op_timeout": secs, "rados_mon_op_timeout": secs,
                    "client_mount_timeout": secs}
            opts.update({k: _b(v) for k, v in (options or {}).items()})
            for k, v in opts.items():
                check(L.rados_conf_set(self._h, k.encode(), v), f"rados_conf_set {k}")
            check(L.rados_connect(self._h), "rados_connect")
        except BaseException:
            L.rados_shutdown(self._h)
            self._h = c_void_p()
            raise

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        if self._h:
            lib().rados_shutdown(self._h)
            self._h = c_void_p()

    def open_ioctx(self, pool: str, namespace: str = "") -> "IoCtx":
        return IoCtx(self, pool, namespace)

    def instance_id(self) -> int:
        """The client's global id: ``client.<id>`` is how lockers and watchers name it."""
        return lib().rados_get_instance_id(self._h)

    def addrs(self) -> str:
        """This client's address as blocklists and list_lockers spell it."""
        out = c_void_p()
        check(lib().rados_getaddrs(self._h, byref(out)), "rados_getaddrs")
        text = ctypes.string_at(out).decode()       # NUL-terminated, freed by librados' free
        lib().rados_buffer_free(out)
        return text

    def wait_for_latest_osdmap(self) -> None:
        check(lib().rados_wait_for_latest_osdmap(self._h), "rados_wait_for_latest_osdmap")

    def mon_command(self, cmd: dict, inbuf: bytes = b"") -> tuple[bytes, str]:
        """Send one JSON command to the mons; returns (output, status string)."""
        argv = (c_char_p * 1)(json.dumps(cmd).encode())
        out, outlen, st, stlen = c_void_p(), c_size_t(), c_void_p(), c_size_t()
        ret = lib().rados_mon_command(self._h, argv, 1, inbuf, len(inbuf), byref(out),
                                      byref(outlen), byref(st), byref(stlen))
        data = take_buffer(out, outlen.value)
        status = take_buffer(st, stlen.value).decode(errors="replace")
        check(ret, f"mon_command {cmd.get('prefix')} ({status})")
        return data, status

    def blocklist_add(self, addr: str, expire: float = 3600.0) -> None:
        """Fence a client: its next op fails with ESHUTDOWN (after the OSDs see the map)."""
        self.mon_command({"prefix": "osd blocklist", "blocklistop": "add", "addr": addr,
                          "expire": float(expire)})


@dataclass
class WriteOp:
    """A compound write applied atomically to one object by ``IoCtx.operate``."""
    steps: list[tuple] = field(default_factory=list)

    def create(self, exclusive: bool = False) -> "WriteOp":
        self.steps.append(("create", exclusive))
        return self

    def write(self, data: bytes, offset: int = 0) -> "WriteOp":
        self.steps.append(("write", bytes(data), offset))
        return self

    def write_full(self, data: bytes) -> "WriteOp":
        self.steps.append(("write_full", bytes(data)))
        return self

    def omap_set(self, kv: dict[str, bytes]) -> "WriteOp":
        self.steps.append(("omap_set", {_b(k): bytes(v) for k, v in kv.items()}))
        return self

    def omap_rm(self, keys: list[str]) -> "WriteOp":
        self.steps.append(("omap_rm", [_b(k) for k in keys]))
        return self

    def execute(self, cls: str, method: str, inbuf: bytes = b"") -> "WriteOp":
        self.steps.append(("exec", cls.encode(), method.encode(), bytes(inbuf)))
        return self

    def assert_locked(self, name: str, cookie: str, tag: str = "") -> "WriteOp":
        """Fail the whole op with EBUSY unless we hold exclusive lock ``name`` with
        ``cookie``: cls_lock is advisory, this makes it guard the update (NOTES §4.3)."""
        return self.execute("lock", "assert_locked", assert_locked_input(name, cookie, tag))


class IoCtx(LockOps):
    """An I/O context on one pool and namespace."""

    def __init__(self, cluster: Cluster, pool: str, namespace: str = ""):
        self.cluster, self.pool, self.namespace = cluster, pool, namespace
        self._h = c_void_p()
        check(lib().rados_ioctx_create(cluster._h, pool.encode(), byref(self._h)),
              f"rados_ioctx_create {pool}")
        lib().rados_ioctx_set_namespace(self._h, namespace.encode())

    def __enter__(self) -> "IoCtx":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._h:
            lib().rados_aio_flush(self._h)      # no aio may outlive its ioctx
            lib().rados_ioctx_destroy(self._h)
            self._h = c_void_p()

    def write(self, oid: str, data: bytes, offset: int = 0) -> None:
        check(lib().rados_write(self._h, _b(oid), data, len(data), offset), f"write {oid}")

    def write_full(self, oid: str, data: bytes) -> None:
        check(lib().rados_write_full(self._h, _b(oid), data, len(data)), f"write_full {oid}")

    def read(self, oid: str, length: int, offset: int = 0) -> bytes:
        """``length`` bytes at ``offset``; zeros where the object (or its tail) is missing."""
        buf = ctypes.create_string_buffer(length)
        ret = lib().rados_read(self._h, _b(oid), buf, length, offset)
        if ret == -2:                               # ENOENT: never written, reads as zeros
            return bytes(length)
        n = check(ret, f"read {oid}")
        return buf.raw[:n] + bytes(length - n)

    def stat(self, oid: str) -> tuple[int, int]:
        """(size, mtime); ObjectNotFound if the object does not exist."""
        size, mtime = c_uint64(), c_int64()
        check(lib().rados_stat(self._h, _b(oid), byref(size), byref(mtime)), f"stat {oid}")
        return size.value, mtime.value

    def remove(self, oid: str) -> None:
        check(lib().rados_remove(self._h, _b(oid)), f"remove {oid}")

    def operate(self, oid: str, op: WriteOp) -> None:
        """Apply ``op`` atomically; the first failing step's errno fails the whole op."""
        L = lib()
        h = L.rados_create_write_op()
        keep: list = []                 # the C op points into these until operate returns
        try:
            for step in op.steps:
                kind = step[0]
                if kind == "create":
                    L.rados_write_op_create(h, CREATE_EXCLUSIVE if step[1] else 0, None)
                elif kind == "write":
                    L.rados_write_op_write(h, step[1], len(step[1]), step[2])
                elif kind == "write_full":
                    L.rados_write_op_write_full(h, step[1], len(step[1]))
                elif kind == "omap_set":
                    n = len(step[1])
                    keys = (c_char_p * n)(*step[1].keys())
                    vals = (c_char_p * n)(*step[1].values())
                    klen = (c_size_t * n)(*map(len, step[1].keys()))
                    vlen = (c_size_t * n)(*map(len, step[1].values()))
                    keep += [keys, vals, klen, vlen]
                    L.rados_write_op_omap_set2(h, keys, vals, klen, vlen, n)
                elif kind == "omap_rm":
                    n = len(step[1])
                    keys = (c_char_p * n)(*step[1])
                    klen = (c_size_t * n)(*map(len, step[1]))
                    keep += [keys, klen]
                    L.rados_write_op_omap_rm_keys2(h, keys, klen, n)
                else:                               # exec
                    prval = c_int()
                    keep.append(prval)
                    L.rados_write_op_exec(h, step[1], step[2], step[3], len(step[3]), byref(prval))
            check(L.rados_write_op_operate(h, self._h, _b(oid), None, 0), f"write op {oid}")
        finally:
            L.rados_release_write_op(h)

    def omap_get(self, oid: str, prefix: str = "", page: int = 1024) -> dict[str, bytes]:
        """All omap pairs whose key starts with ``prefix``; ObjectNotFound if no object."""
        L = lib()
        result: dict[str, bytes] = {}
        after = b""
        while True:
            h = L.rados_create_read_op()
            it, more, prval = c_void_p(), c_ubyte(), c_int()
            try:
                L.rados_read_op_omap_get_vals2(h, after, _b(prefix), page, byref(it), byref(more),
                                               byref(prval))
                check(L.rados_read_op_operate(h, self._h, _b(oid), 0), f"omap_get {oid}")
                check(prval.value, f"omap_get {oid}")
                try:
                    k, v, kl, vl = c_void_p(), c_void_p(), c_size_t(), c_size_t()
                    while True:
                        check(L.rados_omap_get_next2(it, byref(k), byref(v), byref(kl), byref(vl)),
                              "omap_get_next2")
                        if not k.value:
                            break
                        after = ctypes.string_at(k, kl.value)
                        result[after.decode()] = ctypes.string_at(v, vl.value) if vl.value else b""
                finally:
                    L.rados_omap_get_end(it)
            finally:
                L.rados_release_read_op(h)
            if not more.value:
                return result

