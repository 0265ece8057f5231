"""vsand's RADOS backend: a pool whose drives live in one RADOS pool and namespace.

The daemon finds it through the ``vsand.backends`` entry point (vsand/backends.py
says what a backend provides). A RADOS pool has ``drives`` virtual drives of
``drive_size`` bytes, named ``rados://<pool>/<namespace>/d<index>``; their PSEGs are
objects created on first write (drive.py), so a fresh pool costs nothing but its
metadata. Redundancy is the RADOS pool's (its size or erasure code): LUNs on it are
RAID0 over the virtual drives, and the pool keeps one quorum copy of its metadata,
in the omap of the metadata object that the owner holds locked (owner.py).

Formatting uses a quorum space of ``QUORUM`` bytes rather than the local default:
the log then checkpoints more often, but every value of it is one omap key the owner
keeps in memory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from vsand.errors import Busy as VsanBusy, Corrupt, InvalidArgument, IOFailure
from vsand.meta import format as fmt
from vsand.units import MiB, Units

from .client import Cluster, WriteOp
from .drive import QBLOCK, RadosDrive
from .errors import Blocklisted, Busy, ObjectNotFound, RadosError
from .heartbeat import Beacon, Standby
from .owner import META_OID, Owner

QUORUM = 8 * MiB
QUORUM_COPIES = 1
SCHEME = "rados://"
log = logging.getLogger("vsand.rados")


class RadosBackend:
    name = "rados"
    quorum_copies = QUORUM_COPIES

    def __init__(self, conf: str, pool: str, namespace: str = "", user: str = "client.admin",
                 timeout: float = 30.0, watch_timeout: int = 5):
        if not conf:
            raise InvalidArgument("backend rados needs rados.conf (the path of a ceph.conf)")
        if not pool:
            raise InvalidArgument("backend rados needs rados.pool")
        self.pool_name, self.namespace = pool, namespace
        self.units = Units(quorum=QUORUM)
        self.quorum, self.pseg = QUORUM, self.units.pseg
        self.watch_timeout = watch_timeout
        self.on_lost = None             # (reason) -> None, called from any thread
        self._lost = False
        self.epoch = 0                  # this daemon's term as the owner (owner.py)
        try:
            # librados pings a watch once per objecter tick (5 s by default): with a
            # watch timeout of 5 s the OSD would drop a live watch between pings. An op
            # dropped while a restarted OSD takes its PGs back is resent only once it
            # counts as laggy (objecter_timeout, 10 s by default): a 10 s stall for clients
            self.cluster = Cluster(conf, name=user, timeout=timeout,
                                   options={"objecter_tick_interval": "1", "objecter_timeout": "2"})
            self.io = self.cluster.open_ioctx(pool, namespace)
        except RadosError as e:
            raise IOFailure(f"RADOS pool {pool!r} (conf {conf}): {e.strerror}") from None
        self.owner = Owner(self.cluster, self.io)
        self.blocks: dict[int, dict[int, bytes]] = {}

    @classmethod
    def from_config(cls, cfg) -> "RadosBackend":
        return cls(cfg.rados_conf, cfg.rados_pool, cfg.rados_namespace, cfg.rados_user,
                   cfg.rados_timeout)

    # ---- ownership --------------------------------------------------------------
    def claim(self) -> None:
        """Takes the pool's lock and watch, then reads its metadata: a Busy error names
        the daemon holding it."""
        try:
            self.epoch = self.owner.acquire()
        except Busy as e:
            raise VsanBusy(f"{self.where()} is owned by another daemon ({e}): start this one "
                           f"with --standby to take over when that one is gone") from None
        except RadosError as e:
            raise IOFailure(f"taking {self.where()}: {e.strerror}") from None
        try:
            self._own()
        except BaseException:
            # no daemon will watch this lock: let it go, or every later start is refused
            self.close()
            raise

    def inspect(self, live: bool = False) -> None:
        """Reads the pool's metadata without taking it (the checker): Busy, naming the
        owner, while a daemon holds it, unless ``live``."""
        if not live:
            try:
                h = self.owner.holder()
            except RadosError as e:
                raise IOFailure(f"reading the lock of {self.where()}: {e.strerror}") from None
            if h is not None:
                raise VsanBusy(f"{self.where()} is owned by {h.client} at {h.addr}")
        self._load()

    async def standby(self, cfg) -> None:
        """Waits, hearing the active daemon's heartbeats, until it is gone (no heartbeat
        and no watch), then fences it and takes the pool over."""
        sb = Standby(cfg.heartbeat_addr(), self.where())
        try:
            self.epoch = await sb.wait_for_takeover(self.owner, cfg.takeover_after)
        except RadosError as e:
            raise IOFailure(f"taking {self.where()} over: {e.strerror}") from None
        finally:
            await sb.stop()
        log.warning("took over %s: epoch %d", self.where(), self.epoch)
        self._own()

    def _own(self) -> None:
        self.owner.watch(self._watch_failed, timeout=self.watch_timeout)
        self._load()

    def _watch_failed(self, err: int) -> None:
        """A watch breaks when this client was blocklisted, but also when its pings
        lapsed (a stalled process, an OSD restart): look again, off the librados
        thread that called this, and carry on if the lock is still ours."""
        threading.Thread(target=self._rewatch, args=(err,), name="vsand-rewatch", daemon=True).start()

    def _rewatch(self, err: int) -> None:
        """Until the watch is back or the pool is lost: an unreachable cluster cannot
        say which, and the guard refuses our metadata meanwhile if we lost it."""
        while not self._lost:
            try:
                if not self.owner.holds():
                    return self.lost(f"the watch on {META_OID} broke (errno {err}) and the "
                                     f"lock is no longer ours")
                self.owner.rewatch(self._watch_failed, timeout=self.watch_timeout)
                log.warning("the watch on %s broke (errno %d); the lock is still ours: "
                            "watching again", META_OID, err)
                return
            except Blocklisted:
                return self.lost(f"this client was blocklisted (the watch on {META_OID} broke, "
                                 f"errno {err})")
            except RadosError as e:
                log.error("the watch on %s broke (errno %d) and cannot be renewed yet: %s",
                          META_OID, err, e.strerror)
                time.sleep(1.0)

    def lost(self, reason: str) -> None:
        """Another daemon owns the pool now: nothing more may be written. Said once."""
        if self._lost:
            return
        self._lost = True
        log.error("this daemon lost the pool %s/%s: %s", self.pool_name, self.namespace, reason)
        if self.on_lost is not None:
            self.on_lost(reason)

    @contextlib.asynccontextmanager
    async def beacon(self, cfg):
        """The active daemon's heartbeats to its standby (``peer``), while it serves."""
        peer = cfg.peer_addr()
        if peer is None:
            yield
            return
        bind = cfg.heartbeat_addr() or (peer[0] if peer[0].startswith("127.") else "0.0.0.0", 0)
        b = Beacon(bind, peer, self.where(), self.epoch,
                   on_lost=lambda e: self.lost(f"an active peer holds a newer term (epoch {e} > "
                                               f"{self.epoch})"))
        async with b:
            yield

    def update_meta(self, op: WriteOp) -> None:
        self.io.operate(META_OID, self.owner.guard(op))

    # ---- drives -----------------------------------------------------------------
    def _load(self) -> None:
        try:
            kv = self.io.omap_get(META_OID, prefix="q")
        except ObjectNotFound:
            kv = {}
        except RadosError as e:
            raise IOFailure(f"reading the metadata of {self.where()}: {e.strerror}") from None
        self.blocks = {}
        for k, v in kv.items():
            d, _, b = k[1:].partition(".")
            if len(v) == QBLOCK:
                self.blocks.setdefault(int(d), {})[int(b, 16)] = v

    def where(self) -> str:
        return f"{SCHEME}{self.pool_name}/{self.namespace}"

    def paths(self, count: int) -> list[str]:
        """The drive paths of a new pool of ``count`` drives, or those already formatted."""
        have = sorted(self.blocks)
        return [f"{self.where()}/d{i}" for i in (have or range(count))]

    def formatted(self) -> bool:
        """Whether any drive carries a label (a creation began)."""
        return any(0 in blocks for blocks in self.blocks.values())

    def open_drive(self, path: str, create_size: int | None) -> RadosDrive:
        prefix = self.where() + "/d"
        if not path.startswith(prefix) or not path[len(prefix):].isdigit():
            raise InvalidArgument(f"{path}: not a drive of {self.where()} (expected {prefix}N)")
        index = int(path[len(prefix):])
        if create_size is None and 0 not in self.blocks.get(index, {}):
            raise InvalidArgument(f"drive {path} does not exist")
        blocks = self.blocks.setdefault(index, {})
        if create_size is None:
            try:
                size = fmt.unpack_label(blocks[0][:fmt.LABEL.size]).size
            except Corrupt as e:
                raise IOFailure(f"drive {path}: {e.message}") from None
        else:
            size = create_size
        return RadosDrive(self, index, path, size, blocks)

    def close(self, release: bool = True) -> None:
        """Lets go of the pool: the lock too when ``release`` (a clean stop)."""
        if release and not self._lost:
            try:
                self.owner.release()
            except RadosError as e:
                log.warning("releasing %s: %s", META_OID, e.strerror)
        self.io.close()
        self.cluster.shutdown()
