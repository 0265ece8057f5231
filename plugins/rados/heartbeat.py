"""UDP heartbeats between the active vsand daemon of a RADOS pool and its standby.

The active daemon's ``Beacon`` sends ``{"v": 1, "role": "active", "epoch": E, "pool": P,
"seq": n}`` (msgpack) every ``interval`` to the peer; the ``Standby`` listens on its own
address and answers each with ``{"v": 1, "role": "standby", "pool": P, "seq": n}``.

Heartbeats only decide *when to look*: the standby takes over once it has heard nothing for
``takeover_after`` seconds (or never heard anything) AND the lock holder no longer watches
the metadata object (owner.py). A holder whose heartbeats are lost but whose watch is alive
(a cut link between the daemons, a stalled event loop) is left alone; one that was killed or
stopped loses its watch after the watch timeout, and is then fenced by ``take_over``.

A Beacon that hears an *active* peer with a higher epoch has been taken over (the other
daemon holds a newer term): it calls ``on_lost``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Awaitable, Callable

import asyncio_dgram
import msgpack

from .errors import Blocklisted, Busy, RadosError
from .owner import Owner

log = logging.getLogger("vsand.rados.heartbeat")

VERSION = 1
Addr = tuple[str, int]


def encode(msg: dict) -> bytes:
    return msgpack.packb({"v": VERSION, **msg})


def decode(data: bytes) -> dict | None:
    """The message, or None for anything that is not a heartbeat of this version."""
    try:
        msg = msgpack.unpackb(data, raw=False)
    except Exception:                   # msgpack raises several types for garbage
        return None
    if (not isinstance(msg, dict) or msg.get("v") != VERSION
            or msg.get("role") not in ("active", "standby") or not isinstance(msg.get("pool"), str)):
        return None
    return msg


class _Endpoint:
    """A bound UDP socket and the task reading it; ``handle(msg, sender)`` gets every
    heartbeat of our pool (the active's or the standby's side of the exchange)."""

    def __init__(self, bind: Addr, pool: str, handle: Callable[[dict, Addr], Awaitable[None]]):
        self.bind, self.pool, self.handle = bind, pool, handle
        self._stream: asyncio_dgram.aio.DatagramServer | None = None
        self._tasks: list[asyncio.Task] = []
        self._strangers: set[tuple] = set()         # (sender, pool) warned about

    @property
    def addr(self) -> Addr:
        """The bound address (the real port when bound to port 0)."""
        assert self._stream is not None, "not started"
        return self._stream.sockname[:2]

    async def start(self) -> None:
        if self._stream is None:
            self._stream = await asyncio_dgram.bind(self.bind)
            self._tasks.append(asyncio.create_task(self._receive()))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _send(self, msg: dict, to: Addr) -> None:
        try:
            await self._stream.send(encode(msg), to)        # type: ignore[union-attr]
        except OSError as e:            # an unreachable peer must not stop the heartbeat
            log.debug("heartbeat to %s:%s: %s", to[0], to[1], e)

    async def _receive(self) -> None:
        while True:
            try:
                data, sender = await self._stream.recv()    # type: ignore[union-attr]
            except asyncio_dgram.TransportClosed:
                return
            except OSError as e:        # an ICMP error queued for the socket
                log.debug("heartbeat socket: %s", e)
                continue
            msg = decode(data)
            if msg is None:
                continue
            if msg.get("pool") != self.pool:
                if (sender, msg["pool"]) not in self._strangers:   # once, not 4 times a second
                    self._strangers.add((sender, msg["pool"]))
                    log.warning("heartbeat from %s:%s for pool %r ignored (ours is %r)",
                                sender[0], sender[1], msg["pool"], self.pool)
                continue
            await self.handle(msg, sender[:2])


class Beacon(_Endpoint):
    """The active daemon's side: heartbeats to ``peer`` every ``interval`` seconds.

    ``on_lost(peer_epoch)`` is called once, on the loop, when a heartbeat from an active
    peer with a higher epoch arrives (we were taken over)."""

    def __init__(self, bind: Addr, peer: Addr, pool: str, epoch: int,
                 on_lost: Callable[[int], None] | None = None, interval: float = 0.25):
        super().__init__(bind, pool, self._handle)
        self.peer, self.epoch, self.on_lost, self.interval = peer, epoch, on_lost, interval
        self.sent = 0
        self.standby_heard = 0                  # answers from a standby
        self.last_standby: float | None = None  # loop.time() of the last one
        self.active_heard = 0                   # heartbeats from another active daemon
        self.lost_to: int | None = None         # the epoch of the peer that took over

    async def start(self) -> None:
        if self._stream is None:
            await super().start()
            self._tasks.append(asyncio.create_task(self._beat()))

    async def _beat(self) -> None:
        while True:
            self.sent += 1
            await self._send({"role": "active", "epoch": self.epoch, "pool": self.pool,
                              "seq": self.sent}, self.peer)
            await asyncio.sleep(self.interval)

    async def _handle(self, msg: dict, sender: Addr) -> None:
        if msg["role"] == "standby":
            self.standby_heard += 1
            self.last_standby = asyncio.get_running_loop().time()
            return
        epoch = msg.get("epoch")
        if not isinstance(epoch, int):
            return
        self.active_heard += 1
        if epoch > self.epoch:
            if self.lost_to is None:
                self.lost_to = epoch
                log.error("active peer %s:%s has epoch %d > ours %d: we were taken over",
                          sender[0], sender[1], epoch, self.epoch)
                if self.on_lost is not None:
                    self.on_lost(epoch)
        elif self.active_heard == 1:
            # the other one is the stale side: its own Beacon hears ours and gives up
            log.warning("active peer %s:%s with epoch %d (ours %d)", sender[0], sender[1],
                        epoch, self.epoch)


class Standby(_Endpoint):
    """The standby's side: listens for the active's heartbeats and answers them, and
    ``wait_for_takeover`` decides when the active is gone.

    ``decisions`` counts every look at the lock holder by its outcome ("holder alive",
    "holder gone", "no holder", "lost race", "error"); ``heard`` counts heartbeats received."""

    def __init__(self, bind: Addr, pool: str, check_every: float = 0.5):
        super().__init__(bind, pool, self._handle)
        self.check_every = check_every
        self.heard = 0
        self.last_heard: float | None = None    # loop.time() of the last active heartbeat
        self.active_epoch: int | None = None
        self.decisions: Counter[str] = Counter()

    async def _handle(self, msg: dict, sender: Addr) -> None:
        if msg["role"] != "active":
            return
        self.heard += 1
        self.last_heard = asyncio.get_running_loop().time()
        if isinstance(msg.get("epoch"), int):
            self.active_epoch = msg["epoch"]
        if self.heard == 1:
            log.info("standby: hearing the active daemon at %s:%s (epoch %s)", sender[0], sender[1],
                     self.active_epoch)
        await self._send({"role": "standby", "pool": self.pool, "seq": msg.get("seq")}, sender)

    def silence(self) -> float:
        """Seconds since the last heartbeat (infinite if none was ever heard)."""
        if self.last_heard is None:
            return float("inf")
        return asyncio.get_running_loop().time() - self.last_heard

    def _decide(self, what: str, detail: str) -> None:
        if self.decisions[what] == 0 or what != "holder alive":
            log.info("standby: %s (%s)", what, detail)
        self.decisions[what] += 1

    async def wait_for_takeover(self, owner: Owner, takeover_after: float = 3.0) -> int:
        """Return the new epoch once we took the pool over: when no heartbeat came for
        ``takeover_after`` s (or none ever) and the lock holder no longer watches the
        metadata object (or nobody holds the lock). The librados and CLI calls run in
        threads; the loop keeps answering heartbeats meanwhile."""
        await self.start()
        while True:
            quiet = self.silence()
            if quiet < takeover_after:
                await asyncio.sleep(takeover_after - quiet)
                continue
            try:
                epoch = await self._look(owner, takeover_after, quiet)
            except Blocklisted:
                raise                           # this handle is dead: nothing to retry
            except RadosError as e:             # a slow OSD, a failed CLI run: look again
                self._decide("error", str(e))
                epoch = None
            if epoch is not None:
                log.warning("standby took over %s: epoch %d", owner, epoch)
                return epoch
            await asyncio.sleep(self.check_every)

    async def _look(self, owner: Owner, takeover_after: float, quiet: float) -> int | None:
        """One look at the lock holder; the new epoch if we took over, else None."""
        locker = await asyncio.to_thread(owner.holder)
        if locker is not None:
            if await asyncio.to_thread(owner.holder_alive, locker):
                self._decide("holder alive", f"{locker.client} still watches")
                return None
            if self.silence() < takeover_after:         # it spoke up while we looked
                return None
            since = "ever" if quiet == float("inf") else f"for {quiet:.1f} s"
            self._decide("holder gone", f"{locker.client} at {locker.addr}: no watch, "
                         f"no heartbeat {since}")
        else:
            self._decide("no holder", "nobody holds the lock")
        try:
            return await asyncio.to_thread(owner.take_over, locker)
        except Busy as e:                               # another daemon was quicker
            self._decide("lost race", str(e))
            return None
