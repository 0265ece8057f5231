"""Ownership of a vsand pool on RADOS: one exclusive cls_lock on the metadata object.

The active daemon holds lock ``LOCK_NAME`` on ``META_OID`` and keeps a watch on that
object; its liveness, as a standby sees it, is that watch (librbd's ManagedLock does the
same). Every metadata update goes through ``guard``, so a daemon that lost the lock can no
longer change the metadata (EBUSY), and ``take_over`` blocklists the old holder so it can
no longer write anything at all (ESHUTDOWN).

Each ownership term has an epoch (omap key ``epoch`` of the metadata object, ASCII
decimal) that ``acquire`` and ``take_over`` raise by one: the heartbeats carry it, and the
daemon with the higher epoch is the one that owns the pool.

Everything here is blocking librados (and, for ``holder_alive``, the ``rados`` CLI):
asyncio code calls it through ``asyncio.to_thread`` (heartbeat.py does).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import uuid
from typing import Callable

from .client import Cluster, IoCtx, WriteOp
from .errors import Busy, ObjectNotFound, RadosError
from .locks import Locker, Watch

LOCK_NAME = "vsand"
META_OID = "vsand.meta"
EPOCH_KEY = "epoch"
BLOCKLIST_EXPIRE = 24 * 3600.0      # outlives any stuck old owner; a restart gets a new address


class Owner:
    """This daemon's claim on one pool (an IoCtx: pool and namespace)."""

    def __init__(self, cluster: Cluster, io: IoCtx, oid: str = META_OID):
        self.cluster, self.io, self.oid = cluster, io, oid
        # unique per daemon instance: a restarted daemon never passes for its predecessor
        self.cookie = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:12]}"
        self._watch: Watch | None = None

    def __repr__(self) -> str:
        return f"Owner({self.io.pool}/{self.io.namespace}:{self.oid} cookie={self.cookie})"

    # --- the lock -------------------------------------------------------------------------

    def acquire(self) -> int:
        """Take the lock (no lease: it lasts until released, broken or the holder fenced)
        and start a new epoch, which is returned. Busy, naming the holder, if it is held."""
        try:
            self.io.lock_exclusive(self.oid, LOCK_NAME, self.cookie, desc=self._desc())
        except Busy:
            h = self.holder()
            who = (f"{h.client} at {h.addr} (cookie {h.cookie})" if h else
                   "another client (gone again)")
            raise Busy(errno.EBUSY, f"lock {LOCK_NAME} on {self.oid}: held by {who}") from None
        return self._bump_epoch()

    def guard(self, op: WriteOp) -> WriteOp:
        """Make ``op`` fail as a whole (EBUSY) unless we still hold the lock."""
        return op.assert_locked(LOCK_NAME, self.cookie)

    def holder(self) -> Locker | None:
        try:
            lockers = self.io.list_lockers(self.oid, LOCK_NAME).lockers
        except ObjectNotFound:
            return None
        return lockers[0] if lockers else None

    def holds(self) -> bool:
        h = self.holder()
        return h is not None and h.cookie == self.cookie

    def epoch(self) -> int:
        try:
            v = self.io.omap_get(self.oid, prefix=EPOCH_KEY).get(EPOCH_KEY)
        except ObjectNotFound:
            return 0
        return int(v) if v else 0

    def _bump_epoch(self) -> int:
        epoch = self.epoch() + 1            # read-modify-write is safe: the write is guarded
        self.io.operate(self.oid, self.guard(WriteOp()).omap_set({EPOCH_KEY: b"%d" % epoch}))
        return epoch

    def _desc(self) -> str:
        return f"vsand pid {os.getpid()} on {socket.gethostname()}"

    # --- liveness -------------------------------------------------------------------------

    def watch(self, on_lost: Callable[[int], None], timeout: int = 5,
              loop: asyncio.AbstractEventLoop | None = None) -> Watch:
        """Keep a watch on the metadata object: it is how a standby sees us alive. The OSD
        drops it ``timeout`` s after we stop pinging (killed, stopped, cut off), so a standby
        can take over then. ``on_lost(errno)`` runs when the watch breaks (ENOTCONN right
        after we are blocklisted) — from a librados thread, or with ``loop`` given, on that
        loop through call_soon_threadsafe."""
        if self._watch is not None:
            raise RuntimeError("already watching")
        if loop is not None:
            def cb(err: int) -> None:
                loop.call_soon_threadsafe(on_lost, err)
        else:
            cb = on_lost
        self._watch = self.io.watch(self.oid, on_error=cb, timeout=max(1, int(timeout)))
        return self._watch

    def rewatch(self, on_lost: Callable[[int], None], timeout: int = 5) -> Watch:
        """A new watch in place of one that broke (its pings lapsed, an OSD restarted)."""
        w, self._watch = self._watch, None
        if w is not None:
            try:
                w.close()
            except RadosError:
                pass                # a broken watch may refuse its unwatch
        return self.watch(on_lost, timeout)

    def holder_alive(self, locker: Locker) -> bool:
        """Whether ``locker`` still watches the metadata object. Matched by client id (the
        mon's global id, unique per client instance); addresses are spelt differently by
        list_lockers ("v1:" prefix) and the rados CLI."""
        try:
            watchers = self.io.list_watchers(self.oid)
        except ObjectNotFound:
            return False
        return any(w.client == locker.client for w in watchers)

    # --- takeover -------------------------------------------------------------------------

    def take_over(self, locker: Locker | None) -> int:
        """Fence ``locker`` and take the lock; returns the new epoch.

        The order matters: a blocklist bites only once the OSD has the new OSD map, so after
        blocklisting we wait for the map and then do an op on the metadata object's OSD
        (break_lock): that op carries the new map epoch and the OSD catches up before serving
        it. Only then can nothing of the old owner land any more. With ``locker`` None
        (nobody held the lock) this is ``acquire``."""
        if locker is not None and locker.cookie == self.cookie:
            # an earlier try took the lock, then timed out before it knew (or before the
            # epoch went up): the lock is ours, only the new term is missing
            return self._bump_epoch()
        if locker is not None:
            self.cluster.blocklist_add(locker.addr, expire=BLOCKLIST_EXPIRE)
            self.cluster.wait_for_latest_osdmap()
            try:
                self.io.break_lock(self.oid, LOCK_NAME, locker.client, locker.cookie)
            except ObjectNotFound:
                pass                # released meanwhile; the old holder is fenced all the same
        self.io.lock_exclusive(self.oid, LOCK_NAME, self.cookie, desc=self._desc())
        return self._bump_epoch()

    def release(self) -> None:
        """Clean stop: drop the watch and the lock (a standby may then take over at once)."""
        w, self._watch = self._watch, None
        try:
            if w is not None:
                w.close()
        finally:
            try:
                self.io.unlock(self.oid, LOCK_NAME, self.cookie)
            except ObjectNotFound:
                pass                # not held (never acquired, or broken by a takeover)
