"""Composition root: config -> pool -> exports -> NBD server + control; signals, sd_notify."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import logging
import os
import signal
import socket
import sys
import time

from . import backends, faults
from . import tls as tls_settings
from .access import Allowlist, Rules
from .config import Config, load
from .control.handlers import Handlers
from .control.server import ControlServer
from .disk import diff
from .disk.assembly import has_label
from .disk.pool import Pool
from .errors import HalfCreated, Unsupported, VsanError
from .nbd.handshake import Export
from .listeners import Listeners
from .physical.lock import StateDirLock
from .physical.uring import Ring
from .server.nbd_server import NbdServer
from .tasks import LEVEL, REBUILD, SCRUB, TaskRunner, Throttle, default_kinds
from .tasks.rebuild import TARGET as WHOLE_POOL
from .tasks.scrub import LAST as SCRUB_LAST
from .units import format_size

log = logging.getLogger("vsand")
EXIT_LOST = 75             # EX_TEMPFAIL: the pool is served on, by another daemon


def sd_notify(state: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("sd_notify failed: %s", e)


def inherited_sockets() -> list[tuple[str, socket.socket]]:
    """systemd socket activation: (name, socket) for each LISTEN_FDS socket."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    n = int(os.environ.get("LISTEN_FDS", "0"))
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    out = []
    for i in range(n):
        fd = 3 + i
        os.set_inheritable(fd, False)
        out.append((names[i] if i < len(names) else "", socket.socket(fileno=fd)))
    return out


def open_pool(cfg: Config, backend=None) -> Pool:
    """The pool of ``cfg``: opened, or formatted when its drives carry no pool yet.
    Drives whose pool creation never completed (labels, no superblock) held
    nothing, so they are formatted again. ``backend``: where the drives live when
    they are not files (vsand/backends.py), already claimed."""
    if backend is not None:
        paths = backend.paths(cfg.drives)
        specs = [(p, cfg.drive_size, "default") for p in paths]
        create = functools.partial(Pool.create, specs, units=backend.units,
                                   drive_factory=backend.open_drive,
                                   quorum_copies=backend.quorum_copies)
        if not backend.formatted():
            log.info("creating pool: %d drives of %s on %s", len(specs), format_size(cfg.drive_size),
                     backend.where())
            return create()
        try:
            return Pool.open(paths, drive_factory=backend.open_drive, accept_loss=cfg.accept_data_loss)
        except HalfCreated as e:
            log.warning("%s: formatting a new pool on them", e.message)
            return create()
    if cfg.drive_paths:
        specs = [(p, None, "default") for p in cfg.drive_paths]
        if not any(has_label(p) for p in cfg.drive_paths):
            log.info("formatting a new pool on %d drives", len(cfg.drive_paths))
            return Pool.create(specs, io=cfg.io)
        paths = cfg.drive_paths
    else:
        specs = [(os.path.join(cfg.state_dir, "drives", f"drive-{i:02d}.img"), cfg.drive_size, "default")
                 for i in range(cfg.drives)]
        paths = sorted(glob.glob(os.path.join(cfg.state_dir, "drives", "*.img")))
        if not any(has_label(p) for p in paths):      # none, or a creation that wrote no label
            log.info("creating pool: %d sparse drives of %s under %s/drives",
                     cfg.drives, format_size(cfg.drive_size), cfg.state_dir)
            return Pool.create(specs, io=cfg.io)
    try:
        return Pool.open(paths, accept_loss=cfg.accept_data_loss, io=cfg.io)
    except HalfCreated as e:
        log.warning("%s: formatting a new pool on them", e.message)
        return Pool.create(specs, io=cfg.io)


class Exports:
    """Every logical disk is an export under its own name."""

    def __init__(self, pool: Pool, default: str = ""):
        self.pool = pool
        self.default = default

    def _name(self, name: str) -> str:
        if name:
            return name
        if self.default:
            return self.default
        return next(iter(self.pool.lds)) if len(self.pool.lds) == 1 else ""

    def lookup(self, name: str):
        ld = self.pool.lds.get(self._name(name))
        if ld is None:
            return None
        return self.export(ld), faults.device(ld.name, ld)

    @staticmethod
    def export(ld) -> Export:
        return Export(ld.name, ld.size, ld.read_only, f"{format_size(ld.size)} RAID{ld.raid}")

    def listing(self) -> list[Export]:
        return [self.export(ld) for ld in sorted(self.pool.lds.values(), key=lambda x: x.name)]

    def begin_flush(self):
        return self.pool.begin_flush()

    def rules(self, name: str) -> Rules:
        ld = self.pool.lds.get(self._name(name))
        return Rules() if ld is None else Rules.of(ld.attrs)

    def peers(self, name: str) -> list[str]:
        ld = self.pool.lds.get(self._name(name))
        return [] if ld is None else [p.name for p in diff.peers(ld)]

    def changes(self, name: str, since: str) -> diff.Changes:
        return diff.Changes(self.pool, self.pool.get(self._name(name)), self.pool.get(since))


class Fresh:
    """What a start creates in the state directory before its pool exists (the
    directory, the lock file), taken back when the start fails: a refused start
    leaves the directory as it found it."""

    def __init__(self, state_dir: str):
        self.dir = state_dir
        self.lock = os.path.join(state_dir, StateDirLock.NAME)
        self.made_dir = False
        self.had_lock = os.path.lexists(self.lock)
        self.kept = False

    def make_dir(self) -> None:
        self.made_dir = not os.path.isdir(self.dir)
        os.makedirs(self.dir, exist_ok=True)

    def keep(self) -> None:
        """The pool is open: what was made is its home now."""
        self.kept = True

    def undo(self) -> None:
        if self.kept:
            return
        try:
            if not self.had_lock:
                os.unlink(self.lock)
            if self.made_dir:
                os.rmdir(self.dir)       # only when empty: a pool half created stays
        except OSError:
            pass


class Daemon:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.pool: Pool | None = None
        self.nbd: NbdServer | None = None
        self.control: ControlServer | None = None
        self.tasks: TaskRunner | None = None
        self.stop_event: asyncio.Event | None = None
        self.tls: tls_settings.Tls | None = None

    async def run(self) -> int:
        cfg = self.cfg
        # TLS settings need nothing else: a certificate that cannot be used refuses
        # the start before anything is bound or created.
        self.tls = tls_settings.load(cfg.tls, cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.tls_verify_peer)
        listeners = Listeners(inherited_sockets())
        fresh = Fresh(cfg.state_dir)
        try:
            # Everything that can refuse the start is tried before a pool exists: the
            # port first (it needs no state directory), then the state directory, its
            # lock (one daemon per pool), the socket files, a shared backend's ownership
            # (a standby waits here until it took the pool over) and the io engine.
            # A second daemon on a pool (its lock file exists) is told who holds the
            # pool rather than that the port is taken.
            early = not fresh.had_lock
            if early:
                listeners.bind_tcp(cfg.tcp())
                listeners.bind_metrics(cfg.metrics_addr())
            fresh.make_dir()
            lock = StateDirLock(cfg.state_dir)
            lock.acquire()
            try:
                if not early:
                    listeners.bind_tcp(cfg.tcp())
                    listeners.bind_metrics(cfg.metrics_addr())
                listeners.bind_unix(cfg.nbd_socket, cfg.control)
                backend = await self._claim()
                try:
                    ring = self._ring()
                    self.pool = open_pool(cfg, backend)
                    fresh.keep()
                    self.pool.detector.limit = cfg.drive_error_limit
                    self.pool.set_drive_timeout(cfg.drive_timeout)
                    try:
                        async with backend.beacon(cfg) if backend else contextlib.nullcontext():
                            return await self._serve(listeners, ring)
                    finally:
                        self.pool.close()
                finally:
                    if backend is not None:
                        backend.close()
            finally:
                lock.release()
        finally:
            listeners.close()
            fresh.undo()

    async def _claim(self):
        """The backend of ``backend`` other than files, owned by this daemon: claimed
        at once, or, as a standby, once the active daemon is gone and taken over."""
        cfg = self.cfg
        if cfg.backend == "files":
            return None
        backend = backends.load(cfg.backend).from_config(cfg)
        try:
            if cfg.standby:
                log.info("standby for %s: hearing the active daemon on %s", backend.where(), cfg.heartbeat)
                sd_notify("READY=1\nSTATUS=standby: waiting to take the pool over")
                await backend.standby(cfg)
            else:
                backend.claim()
        except BaseException:
            backend.close(release=False)
            raise
        backend.on_lost = self._lost
        return backend

    def _lost(self, reason: str) -> None:
        """Another daemon took the pool over: whatever this one has not written stays
        unwritten (its clients reconnect to the new owner). It stops at once, from
        whichever thread noticed, without a checkpoint or a clean-stop record."""
        log.critical("exiting without writing: another daemon owns the pool (%s)", reason)
        for h in logging.getLogger().handlers:
            h.flush()
        os._exit(EXIT_LOST)

    def _ring(self) -> Ring | None:
        """The io_uring reads go through (config ``io_engine``), or None: worker
        threads. Unsupported when "uring" is asked for and there is none."""
        cfg = self.cfg
        if cfg.io_engine == "threads" or not cfg.io_threads:
            log.info("drive reads that miss the page cache: %s",
                     "worker threads" if cfg.io_threads else "on the event loop (io_threads 0)")
            return None
        ring, why = Ring.open(asyncio.get_running_loop().call_soon)
        if ring is None:
            if cfg.io_engine == "uring":
                raise Unsupported(f"io_engine uring: {why}")
            log.info("drive reads that miss the page cache: worker threads (%s)", why)
            return None
        log.info("drive reads that miss the page cache: io_uring")
        return ring

    async def _serve(self, listeners: Listeners, ring: Ring | None) -> int:
        cfg = self.cfg
        self.nbd = NbdServer(Exports(self.pool, cfg.default_export), cfg.max_connections,
                             cfg.idle_timeout, cfg.memory_budget, cfg.io_threads, ring,
                             Allowlist(cfg.nbd_allow), self.tls)
        if cfg.nbd_allow:
            log.info("NBD over TCP: only clients from %s", self.nbd.allow)
        self.tasks = TaskRunner(self.pool, default_kinds(self.pool),
                                Throttle(cfg.task_rate_mib, cfg.task_latency_guard,
                                         foreground=lambda: self.nbd.requests),
                                presync=self.pool.sync_data)
        self.control = ControlServer(Handlers(self.pool, self.nbd, self.tasks, cfg, self._rebuild),
                                     cfg.control_timeout, cfg.control_max_connections)
        self.stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        for sock in listeners.nbd:
            await self.nbd.listen_socket(sock, inherited=listeners.nbd_inherited)
        if self.tls is not None and all(s.family == socket.AF_UNIX for s in listeners.nbd):
            log.warning("tls %s has nothing to do: no TCP listener (UNIX sockets stay plain)", cfg.tls)
        await self.control.listen_socket(listeners.control)
        log.info("control listening on %s", cfg.control)
        web = None
        if listeners.metrics:
            from .web.server import WebListener     # aiohttp is loaded only when configured
            web = WebListener(self, listeners.metrics)
            await web.start()
        log.info("serving %d LUN(s): %s", len(self.pool.lds), ", ".join(sorted(self.pool.lds)) or "-")
        resumed = self.tasks.resume()
        if resumed:
            log.info("resuming background task(s) %s", ", ".join(map(str, resumed)))
        # A drive failing mid-request starts a rebuild once that request is over.
        self.pool.on_failure = lambda index: loop.call_soon(self._rebuild)
        self.tasks.on_finish = lambda t: loop.call_soon(self._after_task, t.kind)
        self._rebuild()
        scrubs = loop.create_task(self._scrub_schedule(), name="vsand-scrub-schedule") \
            if cfg.scrub_interval else None
        sd_notify("READY=1\nSTATUS=serving")
        await self.stop_event.wait()
        log.info("stopping: draining connections")
        sd_notify("STOPPING=1")
        if scrubs is not None:
            scrubs.cancel()
        if web is not None:
            await web.stop()
        await self.tasks.stop()        # at a step boundary; they resume at the next start
        await self.nbd.stop()
        await self.control.close()
        log.info("stopped cleanly")
        return 0

    def _rebuild(self) -> None:
        """Starts a rebuild when failed or leaving drives left something to move (or a
        metadata copy sits on a failed drive) and none runs; lets go of leaving
        drives that hold nothing any more."""
        tasks, pool = self.tasks, self.pool
        if tasks.stopping or any(t.active and t.kind == REBUILD for t in tasks.tasks.values()):
            return
        try:
            todo = len(pool.damage().todo)
            if todo or any(pool.drives[i].failed for i in pool.quorum_ids):
                # leveling or a scrub holds the pool's target: redundancy comes first
                for t in [t for t in tasks.tasks.values() if t.active and t.target == WHOLE_POOL]:
                    tasks.cancel(t.id, "a rebuild goes first")
                    log.warning("task %d (%s) cancelled: a rebuild goes first%s", t.id, t.kind,
                                "; run `vsanctl pool scrub` again later" if t.kind == SCRUB else "")
                t = tasks.start(REBUILD, WHOLE_POOL)
                log.warning("rebuilding or moving %d RStore member(s) of failed or leaving "
                            "drives: task %d", todo, t.id)
            else:
                for i in pool.finish_removals():
                    log.warning("drive %d removed: nothing is left on it", i)
                self._level()
        except VsanError as e:
            log.error("cannot start a rebuild: %s", e.message)

    def _after_task(self, kind: str) -> None:
        """Leveling follows a rebuild or removal (one that ended for want of room too:
        leveling never starts while damage is left). A rebuild refused while another
        pool task ran starts once that one ends; never leveling again after leveling,
        so a leveling that fails is not restarted in a loop."""
        if kind == REBUILD:
            self._level()
        elif self.pool.damage().todo:
            self._rebuild()

    def _level(self) -> None:
        """Starts leveling when an RSS's drives are uneven, nothing is left to
        rebuild or move off a drive, and no leveling or rebuild runs."""
        tasks, pool = self.tasks, self.pool
        if tasks.stopping or any(t.active and t.kind in (REBUILD, LEVEL) for t in tasks.tasks.values()):
            return
        try:
            if not pool.damage().todo and pool.level_remaining():
                t = tasks.start(LEVEL, WHOLE_POOL)
                log.info("leveling the drives' use (widest spread %.1f points): task %d",
                         100 * pool.level_spread(), t.id)
        except VsanError as e:
            log.error("cannot start leveling: %s", e.message)

    async def _scrub_schedule(self) -> None:
        """Starts a scrub every ``scrub_interval`` after the last one ended (the pool
        records when); a pool that never had one counts from this start."""
        every, since = self.cfg.scrub_interval, time.time()
        while True:
            last = self.pool.settings.get(SCRUB_LAST, since)
            wait = last + every - time.time()
            if wait > 0:
                await asyncio.sleep(min(wait, 3600))    # a wall clock set forward is seen within the hour
                continue
            since = time.time()
            tasks = self.tasks
            if not any(t.active and t.kind == SCRUB for t in tasks.tasks.values()):
                try:
                    t = tasks.start(SCRUB, WHOLE_POOL)
                    log.info("periodic scrub (every %d s): task %d", every, t.id)
                except VsanError as e:
                    log.error("cannot start the periodic scrub: %s", e.message)
            await asyncio.sleep(min(every, 3600))

def main(argv: list[str] | None = None) -> int:
    cfg = load(argv)
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    try:
        return asyncio.run(Daemon(cfg).run())
    except VsanError as e:
        log.error("cannot start: %s", e.message)
        return 1
    except OSError as e:            # the state directory or a socket path the OS refuses
        log.error("cannot start: %s%s", e.strerror or e, f": {e.filename}" if e.filename else "")
        return 1
