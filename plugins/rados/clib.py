"""ctypes prototypes for the part of the librados C API (librados.so.2) vsand uses.

Every function gets argtypes and restype, so a wrong call raises in Python instead of
corrupting memory. The C API has been stable since Luminous; the signatures are those
of Ceph 16 (Pacific) <rados/librados.h>. ctypes releases the GIL around each call.
"""

from __future__ import annotations

import ctypes
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_int, c_int64, c_long, c_size_t,
                    c_ssize_t, c_uint8, c_uint32, c_uint64, c_ubyte, c_void_p)

from .errors import Unavailable

P = c_void_p                       # rados_t, rados_ioctx_t, completions, ops, iterators
PP = POINTER(c_void_p)
SIZE = POINTER(c_size_t)

# void (*rados_callback_t)(rados_completion_t cb, void *arg)
COMPLETION_CB = CFUNCTYPE(None, c_void_p, c_void_p)
# void (*rados_watchcb2_t)(void *arg, uint64_t notify_id, uint64_t handle,
#                          uint64_t notifier_id, void *data, size_t data_len)
WATCH_CB = CFUNCTYPE(None, c_void_p, c_uint64, c_uint64, c_uint64, c_void_p, c_size_t)
# void (*rados_watcherrcb_t)(void *pre, uint64_t cookie, int err)
WATCH_ERR_CB = CFUNCTYPE(None, c_void_p, c_uint64, c_int)


class Timeval(Structure):
    # both fields set: python3-rados (Pacific) leaves tv_usec uninitialised, which
    # lengthened leases by up to ~1.8 s (RADOS-NOTES §2)
    _fields_ = [("tv_sec", c_long), ("tv_usec", c_long)]


LOCK_FLAG_RENEW = 1
CREATE_EXCLUSIVE = 1

_PROTOS: dict[str, tuple[object, list]] = {
    "rados_create2": (c_int, [PP, c_char_p, c_char_p, c_uint64]),
    "rados_conf_read_file": (c_int, [P, c_char_p]),
    "rados_conf_set": (c_int, [P, c_char_p, c_char_p]),
    "rados_connect": (c_int, [P]),
    "rados_shutdown": (None, [P]),
    "rados_get_instance_id": (c_uint64, [P]),
    "rados_getaddrs": (c_int, [P, PP]),
    "rados_wait_for_latest_osdmap": (c_int, [P]),
    "rados_buffer_free": (None, [P]),
    "rados_mon_command": (c_int, [P, POINTER(c_char_p), c_size_t, c_char_p, c_size_t,
                                  PP, SIZE, PP, SIZE]),
    "rados_ioctx_create": (c_int, [P, c_char_p, PP]),
    "rados_ioctx_destroy": (None, [P]),
    "rados_ioctx_set_namespace": (None, [P, c_char_p]),
    "rados_write": (c_int, [P, c_char_p, c_char_p, c_size_t, c_uint64]),
    "rados_write_full": (c_int, [P, c_char_p, c_char_p, c_size_t]),
    "rados_read": (c_int, [P, c_char_p, c_void_p, c_size_t, c_uint64]),
    "rados_stat": (c_int, [P, c_char_p, POINTER(c_uint64), POINTER(c_int64)]),
    "rados_remove": (c_int, [P, c_char_p]),
    "rados_aio_create_completion2": (c_int, [c_void_p, COMPLETION_CB, PP]),
    "rados_aio_write": (c_int, [P, c_char_p, P, c_char_p, c_size_t, c_uint64]),
    "rados_aio_read": (c_int, [P, c_char_p, P, c_void_p, c_size_t, c_uint64]),
    "rados_aio_get_return_value": (c_int, [P]),
    "rados_aio_release": (None, [P]),
    "rados_aio_flush": (c_int, [P]),
    "rados_create_write_op": (c_void_p, []),
    "rados_release_write_op": (None, [P]),
    "rados_write_op_create": (None, [P, c_int, c_char_p]),
    "rados_write_op_write": (None, [P, c_char_p, c_size_t, c_uint64]),
    "rados_write_op_write_full": (None, [P, c_char_p, c_size_t]),
    "rados_write_op_omap_set2": (None, [P, POINTER(c_char_p), POINTER(c_char_p), SIZE, SIZE,
                                        c_size_t]),
    "rados_write_op_omap_rm_keys2": (None, [P, POINTER(c_char_p), SIZE, c_size_t]),
    "rados_write_op_exec": (None, [P, c_char_p, c_char_p, c_char_p, c_size_t, POINTER(c_int)]),
    "rados_write_op_operate": (c_int, [P, P, c_char_p, c_void_p, c_int]),
    "rados_create_read_op": (c_void_p, []),
    "rados_release_read_op": (None, [P]),
    "rados_read_op_omap_get_vals2": (None, [P, c_char_p, c_char_p, c_uint64, PP,
                                            POINTER(c_ubyte), POINTER(c_int)]),
    "rados_read_op_operate": (c_int, [P, P, c_char_p, c_int]),
    "rados_omap_get_next2": (c_int, [P, PP, PP, SIZE, SIZE]),
    "rados_omap_get_end": (None, [P]),
    "rados_lock_exclusive": (c_int, [P, c_char_p, c_char_p, c_char_p, c_char_p,
                                     POINTER(Timeval), c_uint8]),
    "rados_unlock": (c_int, [P, c_char_p, c_char_p, c_char_p]),
    "rados_break_lock": (c_int, [P, c_char_p, c_char_p, c_char_p, c_char_p]),
    "rados_list_lockers": (c_ssize_t, [P, c_char_p, c_char_p, POINTER(c_int), c_void_p, SIZE,
                                       c_void_p, SIZE, c_void_p, SIZE, c_void_p, SIZE]),
    "rados_watch3": (c_int, [P, c_char_p, POINTER(c_uint64), WATCH_CB, WATCH_ERR_CB, c_uint32,
                             c_void_p]),
    "rados_unwatch2": (c_int, [P, c_uint64]),
    "rados_watch_check": (c_int, [P, c_uint64]),
    "rados_notify_ack": (c_int, [P, c_char_p, c_uint64, c_uint64, c_char_p, c_int]),
}

_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    """librados.so.2 with every prototype declared; Unavailable if it is not installed."""
    global _lib
    if _lib is None:
        try:
            handle = ctypes.CDLL("librados.so.2")
        except OSError as e:
            raise Unavailable(2, f"load librados.so.2 ({e}); install Debian's librados2") from None
        for name, (restype, argtypes) in _PROTOS.items():
            fn = getattr(handle, name)
            fn.restype = restype
            fn.argtypes = argtypes
        _lib = handle
    return _lib


def take_buffer(ptr: c_void_p, length: int) -> bytes:
    """Copy a librados-allocated buffer out and free it with rados_buffer_free."""
    if not ptr:
        return b""
    data = ctypes.string_at(ptr, length)
    lib().rados_buffer_free(ptr)
    return data
