"""Composition root: config -> pool -> exports -> NBD server + control; signals, sd_notify."""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import signal
import socket
import sys

from . import faults
from .config import Config, load
from .control.schema import POOL_SETTINGS
from .control.server import ControlServer
from .disk import snapclone
from .disk.pool import Pool
from .errors import InvalidArgument, VsanError
from .meta import format as fmt
from .nbd.handshake import Export
from .server.nbd_server import NbdServer
from .tasks import BGCOPY, TaskRunner, Throttle, default_kinds
from .tasks.runner import check_rate
from .units import format_size

log = logging.getLogger("vsand")

# pool.set keys (control/schema.py POOL_SETTINGS) -> (the pool's record key, effective value)
POOL_KEYS = {"snapclone_mode": ("snapclone", snapclone.mode)}


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


def has_label(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(fmt.LABEL_MAGIC)) == fmt.LABEL_MAGIC
    except FileNotFoundError:
        return False


def open_pool(cfg: Config) -> Pool:
    if cfg.drive_paths:
        if not any(has_label(p) for p in cfg.drive_paths):
            log.info("formatting a new pool on %d drives", len(cfg.drive_paths))
            return Pool.create([(p, None, "default") for p in cfg.drive_paths])
        return Pool.open(cfg.drive_paths)
    paths = sorted(glob.glob(os.path.join(cfg.state_dir, "drives", "*.img")))
    if paths:
        return Pool.open(paths)
    specs = [(os.path.join(cfg.state_dir, "drives", f"drive-{i:02d}.img"), cfg.drive_size, "default")
             for i in range(cfg.drives)]
    log.info("creating pool: %d sparse drives of %s under %s/drives",
             cfg.drives, format_size(cfg.drive_size), cfg.state_dir)
    return Pool.create(specs)


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

    def flush(self) -> None:
        self.pool.flush()


class Handlers:
    """Control operations (schema in control/schema.py)."""

    def __init__(self, daemon: "Daemon"):
        self.d = daemon

    @property
    def pool(self) -> Pool:
        return self.d.pool

    def status(self):
        st = self.pool.status()
        return {"pool": st["pool"], "drives": len(st["drives"]),
                "failed_drives": sum(d["failed"] for d in st["drives"]),
                "capacity": sum(d["psegs"] for d in st["drives"]) * self.pool.units.pseg,
                "free": st["free_bytes"], "luns": len(st["lds"]),
                "connections": len(self.d.nbd.connections),
                "tasks_running": sum(t.state == "running" for t in self.d.tasks.tasks.values()),
                "tasks_queued": sum(t.state == "queued" for t in self.d.tasks.tasks.values()),
                "nbd_socket": self.d.cfg.nbd_socket, "listen": self.d.cfg.listen,
                "pid": os.getpid()}

    def lun_create(self, name, size, raid=5, thick=False, ldad="default"):
        return self.pool.create_ld(name, size, raid=raid, ldad=ldad, thick=thick).info()

    def lun_list(self):
        return [ld.info() for ld in sorted(self.pool.lds.values(), key=lambda x: x.name)]

    def lun_show(self, name):
        info = self.pool.get(name).info()
        info["connections"] = sum(1 for c in self.d.nbd.connections
                                  if c.export is not None and c.export.name == name)
        return info

    def lun_resize(self, name, size):
        self.pool.resize_ld(name, size)
        return self.pool.get(name).info()

    def lun_delete(self, name):
        self.pool.get(name)
        self.d.tasks.cancel_target(name, f"{name} was deleted")
        for c in list(self.d.nbd.connections):   # nobody keeps writing into a deleted LUN
            if c.export is not None and c.export.name == name:
                c._abort()
        self.pool.delete_ld(name)
        return {"deleted": name}

    def snapshot_create(self, source, name, reserve=False):
        # Requests are handled synchronously on the loop, so in-flight writes to the
        # source have finished and new ones wait: the quiesce of Fig. 9.
        return self.pool.snapshot(source, name, reserve=reserve).info()

    def snapshot_delete(self, name):
        return self.lun_delete(name)

    def tree(self, name):
        out = []
        for ld in self.pool.chain(name):
            owned, shared = ld.share_counts()
            out.append({"name": ld.name, "owned": owned, "shared": shared,
                        "allocated": owned * self.pool.units.segment,
                        "space": ld.attrs.get("space", "lun"), "invalid": ld.invalid})
        return out

    def lun_set(self, name, read_only=None):
        if read_only is None:
            raise InvalidArgument("nothing to set (use --read-only on|off)")
        self.pool.set_attrs(name, read_only=read_only)
        return self.pool.get(name).info()

    def drive_list(self):
        return self.pool.status()["drives"]

    # ---- snapclones and background tasks ------------------------------------------------
    def snapclone_create(self, source, name, rate=None):
        check_rate(rate)          # refuse before anything is created
        info = self.pool.snapclone(source, name).info()
        info["task"] = self.d.tasks.start(BGCOPY, name, rate).id
        return info

    def snapclone_copy(self, name, rate=None):
        """A new copy task for a snapclone still in its tree (e.g. after a cancel)."""
        if self.pool.clone_state(name).get("done"):
            raise InvalidArgument(f"{name} is not a dependent snapclone: nothing to copy")
        return self.d.tasks.start(BGCOPY, name, rate).info(self.d.tasks.clock())

    def task_list(self):
        return self.d.tasks.list_tasks()

    def task_show(self, id):
        return self.d.tasks.show(id)

    def task_cancel(self, id):
        self.d.tasks.cancel(id)
        return self.d.tasks.show(id)

    def task_set(self, id, rate):
        self.d.tasks.set_rate(id, rate)
        return self.d.tasks.show(id)

    def pool_get(self):
        cfg = self.d.cfg
        return {"settings": {k: value(self.pool) for k, (_, value) in POOL_KEYS.items()},
                "defaults": sorted(k for k, (key, _) in POOL_KEYS.items() if key not in self.pool.settings),
                "choices": {k: list(v) for k, v in POOL_SETTINGS.items()},
                "tasks": {"rate_mib": cfg.task_rate_mib, "latency_guard": cfg.task_latency_guard}}

    def pool_set(self, key, value):
        if key not in POOL_SETTINGS:
            raise InvalidArgument(f"unknown pool setting {key!r} (known: {', '.join(sorted(POOL_SETTINGS))})")
        if value not in POOL_SETTINGS[key]:
            raise InvalidArgument(f"{key} must be one of {', '.join(POOL_SETTINGS[key])}, not {value!r}")
        self.pool.set_setting(POOL_KEYS[key][0], value)
        return self.pool_get()


class Daemon:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.pool: Pool | None = None
        self.nbd: NbdServer | None = None
        self.control: ControlServer | None = None
        self.tasks: TaskRunner | None = None
        self.stop_event: asyncio.Event | None = None

    async def run(self) -> int:
        cfg = self.cfg
        os.makedirs(cfg.state_dir, exist_ok=True)
        self.pool = open_pool(cfg)
        self.nbd = NbdServer(Exports(self.pool, cfg.default_export))
        self.tasks = TaskRunner(self.pool, default_kinds(self.pool),
                                Throttle(cfg.task_rate_mib, cfg.task_latency_guard,
                                         foreground=lambda: self.nbd.requests),
                                presync=self.pool.sync_data)
        self.control = ControlServer(Handlers(self))
        self.stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        inherited = inherited_sockets()
        for name, sock in inherited:
            if name == "control":
                await self.control.listen_socket(sock)
            else:
                await self.nbd.listen_socket(sock)
        if not any(n != "control" for n, _ in inherited):
            await self.nbd.listen_unix(cfg.nbd_socket)
            tcp = cfg.tcp()
            if tcp:
                await self.nbd.listen_tcp(*tcp)
        if not any(n == "control" for n, _ in inherited):
            await self.control.listen(cfg.control)
        log.info("serving %d LUN(s): %s", len(self.pool.lds), ", ".join(sorted(self.pool.lds)) or "-")
        resumed = self.tasks.resume()
        if resumed:
            log.info("resuming background task(s) %s", ", ".join(map(str, resumed)))
        sd_notify("READY=1\nSTATUS=serving")
        await self.stop_event.wait()
        log.info("stopping: draining connections")
        sd_notify("STOPPING=1")
        await self.tasks.stop()        # at a step boundary; they resume at the next start
        await self.nbd.stop()
        await self.control.close()
        self.pool.close()
        for p in (cfg.control,) + (() if inherited else (cfg.nbd_socket,)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        log.info("stopped cleanly")
        return 0


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
