"""librados aio bridged into an asyncio event loop.

librados calls a completion callback on one of its finisher threads; the callback only
reads the return value and hands it to the loop with ``call_soon_threadsafe``, where the
future is settled and the completion released. Buffers stay referenced until then.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import threading
from ctypes import byref, c_void_p

from .clib import COMPLETION_CB, lib
from .errors import check, error

_pending: dict[int, tuple] = {}         # token -> (loop, future, completion, buffer, what)
_tokens = itertools.count(1)
_lock = threading.Lock()


def _settle(fut: asyncio.Future, comp: c_void_p, ret: int, buf, length: int, what: str) -> None:
    lib().rados_aio_release(comp)
    if fut.cancelled():
        return
    if what.startswith("aio_read"):
        if ret == -2:                               # missing object reads as zeros
            fut.set_result(bytes(length))
        elif ret < 0:
            fut.set_exception(error(-ret, what))
        else:
            fut.set_result(buf.raw[:ret] + bytes(length - ret))
    elif ret < 0:
        fut.set_exception(error(-ret, what))
    else:
        fut.set_result(None)


@COMPLETION_CB
def _complete(comp, arg):
    # runs on a librados thread: no Python exception may escape into C
    with _lock:
        entry = _pending.pop(arg, None)
    if entry is None:
        return
    loop, fut, c, buf, length, what = entry
    ret = lib().rados_aio_get_return_value(c)
    try:
        loop.call_soon_threadsafe(_settle, fut, c, ret, buf, length, what)
    except RuntimeError:                            # the loop is closed: nobody waits
        lib().rados_aio_release(c)


def _submit(io, what: str, start, buf, length: int) -> asyncio.Future:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    comp = c_void_p()
    token = next(_tokens)
    check(lib().rados_aio_create_completion2(c_void_p(token), _complete, byref(comp)),
          "rados_aio_create_completion2")
    with _lock:
        _pending[token] = (loop, fut, comp, buf, length, what)
    ret = start(comp)
    if ret < 0:
        with _lock:
            _pending.pop(token, None)
        lib().rados_aio_release(comp)
        raise error(-ret, what)
    return fut


async def aio_write(io, oid: str, data: bytes, offset: int = 0) -> None:
    """Write ``data`` at ``offset`` of ``oid`` (created if missing) without blocking the loop."""
    data = bytes(data)
    await _submit(io, f"aio_write {oid}",
                  lambda c: lib().rados_aio_write(io._h, oid.encode(), c, data, len(data), offset),
                  data, 0)


async def aio_read(io, oid: str, length: int, offset: int = 0) -> bytes:
    """``length`` bytes at ``offset``; zeros where the object (or its tail) is missing."""
    buf = ctypes.create_string_buffer(length)
    return await _submit(io, f"aio_read {oid}",
                         lambda c: lib().rados_aio_read(io._h, oid.encode(), c, buf, length, offset),
                         buf, length)
