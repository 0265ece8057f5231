"""Daemon settings: embedded defaults < TOML file < command-line flags."""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, field, fields

from .access import network
from .nbd.handshake import TLS_MODES
from .physical.drive import IO_MODES
from .server.budget import DEFAULT as MEMORY_BUDGET
from .units import parse_size


@dataclass
class Config:
    state_dir: str = "/var/lib/vsand"
    drives: int = 8                       # simulated drives created on first start
    drive_size: int = 4 << 30
    drive_paths: list[str] = field(default_factory=list)   # explicit drives instead
    nbd_socket: str = ""                  # default: STATE_DIR/nbd.sock
    listen: str = "127.0.0.1:10809"       # "" or "none" disables TCP
    nbd_allow: list[str] = field(default_factory=list)   # TCP clients served (addresses, networks); empty: all
    control: str = ""                     # default: STATE_DIR/control.sock
    default_export: str = ""              # served for the empty export name
    log_level: str = "info"
    task_rate_mib: int = 0                # [tasks] rate_mib: background copy limit, 0 = unlimited
    task_latency_guard: bool = True       # [tasks] latency_guard: yield to NBD traffic
    accept_data_loss: bool = False        # start although a lost drive held unprotected data
    max_connections: int = 1000           # NBD connections at once; more are refused (ERR_POLICY)
    idle_timeout: int = 0                 # seconds without a request before a connection is closed; 0 = never
    memory_budget: int = MEMORY_BUDGET    # NBD reply and payload bytes of all connections beyond their floors
    io_threads: int = 16                  # worker threads for drive I/O that may block; 0 = on the event loop
    io_engine: str = "auto"               # reads that miss the cache: uring, threads or auto
    io: str = "auto"                      # drive I/O: buffered, direct (O_DIRECT) or auto (direct for block devices)
    drive_error_limit: int = 4            # I/O errors a drive may give before it is failed
    drive_timeout: int = 30               # seconds a drive read or write may take (0 = no limit)
    control_timeout: int = 10             # seconds a control client has to send a whole request
    control_max_connections: int = 64     # control connections at once; more get an error reply
    scrub_interval: int = 30 * 86400      # seconds between scrubs (0 = never); like Debian's monthly mdadm check
    overcommit_warn: float = 1.0          # warn when provisioned space exceeds this x capacity; 0 = off
    tls: str = "off"                      # NBD over TCP: off, on (STARTTLS offered) or require (vsand/tls.py)
    tls_cert: str = ""                    # PEM server certificate (chain)
    tls_key: str = ""                     # PEM private key; "" = in the tls_cert file
    tls_ca: str = ""                      # PEM CA certificate(s) that sign client certificates
    tls_verify_peer: bool = False         # require a client certificate signed by tls_ca
    metrics: str = ""                     # HTTP HOST:PORT of /metrics and the status page; "" = off
    backend: str = "files"                # where the drives live: files (image files, devices) or rados
    rados_conf: str = ""                  # [rados] conf: the ceph.conf to connect with
    rados_pool: str = ""                  # [rados] pool
    rados_namespace: str = ""             # [rados] namespace (one vsand pool per namespace)
    rados_user: str = "client.admin"      # [rados] user
    rados_timeout: int = 30               # [rados] timeout: seconds before a RADOS call fails
    standby: bool = False                 # wait as the standby of the active daemon, then take over
    heartbeat: str = ""                   # [rados] heartbeat: this daemon's UDP HOST:PORT
    peer: str = ""                        # [rados] peer: the other daemon's UDP HOST:PORT
    takeover_after: float = 3.0           # [rados] takeover_after: seconds without heartbeats

    def finish(self) -> "Config":
        self.state_dir = os.path.abspath(self.state_dir)
        self.nbd_socket = self.nbd_socket or os.path.join(self.state_dir, "nbd.sock")
        self.control = self.control or os.path.join(self.state_dir, "control.sock")
        if self.listen.lower() == "none":
            self.listen = ""
        return self

    def tcp(self) -> tuple[str, int] | None:
        return _host_port(self.listen)

    def heartbeat_addr(self) -> tuple[str, int] | None:
        return _host_port(self.heartbeat)

    def peer_addr(self) -> tuple[str, int] | None:
        return _host_port(self.peer)

    def metrics_addr(self) -> tuple[str, int] | None:
        """Where the HTTP listener (/metrics) binds, or None: off."""
        return _host_port(self.metrics)


def _host_port(text: str) -> tuple[str, int] | None:
    """(host, port) of a checked HOST:PORT ("" = none; no host = 127.0.0.1)."""
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


# TOML tables: [section] key -> Config field (the flat keys are everything else)
SECTIONS = {"tasks": {"rate_mib": "task_rate_mib", "latency_guard": "task_latency_guard"},
            "rados": {"conf": "rados_conf", "pool": "rados_pool", "namespace": "rados_namespace",
                      "user": "rados_user", "timeout": "rados_timeout", "heartbeat": "heartbeat",
                      "peer": "peer", "takeover_after": "takeover_after"}}
SECTIONED = {f for table in SECTIONS.values() for f in table.values()}
KEYS = {f.name for f in fields(Config)} - SECTIONED
FLAGS = {f.name for f in fields(Config)}
TOML_NAME = {f: f"{sec}.{k}" for sec, table in SECTIONS.items() for k, f in table.items()}


def _size(text) -> int:
    try:
        n = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return n


def _count(text, unit: str = "") -> int:
    try:
        if isinstance(text, bool) or isinstance(text, float) and not text.is_integer():
            raise ValueError
        n = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a whole number{' of ' + unit if unit else ''}: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0{' ' + unit if unit else ''}, not {text!r}")
    return n


def _rate(text) -> int:
    return _count(text, "MiB/s")


def _positive(text) -> int:
    n = _count(text)
    if n == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _on_off(text) -> bool:
    if isinstance(text, bool):
        return text
    t = str(text).strip().lower()
    if t in ("on", "yes", "true", "1"):
        return True
    if t in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, not {text!r}")


def _io_mode(text) -> str:
    if text not in IO_MODES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(IO_MODES)}, not {text!r}")
    return text


DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text) -> int:
    """'30d', '12h', '90m', '45s', a number of seconds, or 'off' / 0 -> seconds."""
    t = str(text).strip().lower()
    if t in ("off", "0", "never"):
        return 0
    try:
        n = int(t[:-1]) * DURATION[t[-1]] if t[-1:] in DURATION else int(t)
    except (ValueError, IndexError):
        n = -1
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30d, 12h, 90m or 45s, or off, not {text!r}")
    return n


def _positive_duration(text) -> int:
    n = _duration(text)
    if n == 0:
        raise argparse.ArgumentTypeError(f"must be a duration of at least 1s, not {text!r}")
    return n


IO_ENGINES = ("auto", "uring", "threads")   # how reads that miss the page cache are done


def _io_engine(text) -> str:
    if text not in IO_ENGINES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(IO_ENGINES)}, not {text!r}")
    return text


LOG_LEVELS = ("debug", "info", "warning", "error")


def _number(text) -> float:
    """``text`` as a float, or -1 for anything that is not a number (booleans too)."""
    try:
        if isinstance(text, bool):
            raise ValueError
        return float(text)
    except (TypeError, ValueError):
        return -1.0


def _ratio(text) -> float:
    """A positive ratio such as 1.0 or 1.5, or off (0)."""
    if isinstance(text, str) and text.strip().lower() in ("off", "none", "never"):
        return 0.0
    r = _number(text)
    if not 0 <= r < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a ratio such as 1.0 or 1.5, or off, not {text!r}")
    return r


def _choice(choices):
    def check(text) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, not {text!r}")
        return text
    return check


def _text(text) -> str:
    if not isinstance(text, str):
        raise argparse.ArgumentTypeError(f"expected a string, not {text!r}")
    return text


def _paths(value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise argparse.ArgumentTypeError(f"expected a list of paths, not {value!r}")
    return value


def _metrics(text) -> str:
    """HOST:PORT, or a port alone (loopback: 127.0.0.1), or "" / "none" / "off"."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    t = _text(text).strip()
    if t.lower() in ("", "none", "off"):
        return ""
    if t.isdigit():
        t = f"127.0.0.1:{t}"
    try:
        return _listen(t)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or PORT (port 1-65535; [::1]:PORT for "
                                         f"IPv6) or off, not {text!r}") from None


BACKENDS = ("files", "rados")


def _udp(text) -> str:
    """HOST:PORT of a heartbeat socket, or ""."""
    t = _text(text).strip()
    if t.lower() in ("", "none"):
        return ""
    return _listen(t)


def _seconds(text) -> float:
    r = _number(text)
    if not 0 < r < 3600:
        raise argparse.ArgumentTypeError(f"expected seconds (0 < s < 3600), not {text!r}")
    return r


def _networks(value) -> list[str]:
    """A list of addresses and networks (access.network), kept as given."""
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expected a list of addresses or networks, not {value!r}")
    for v in value:
        _network(v)
    return value


def _network(text) -> str:
    try:
        network(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _listen(text) -> str:
    """HOST:PORT (IPv6 hosts in brackets), or "" / "none"."""
    t = _text(text).strip()
    if t.lower() in ("", "none"):
        return t
    host, sep, port = t.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or (":" in host and not host.startswith("[")):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (port 1-65535; [::1]:PORT for IPv6) "
                                         f"or none, not {text!r}")
    return t


CHECK = {"state_dir": _text, "drives": _positive, "drive_paths": _paths, "nbd_socket": _text,
         "listen": _listen, "nbd_allow": _networks, "control": _text, "default_export": _text,
         "log_level": _choice(LOG_LEVELS), "drive_size": _size, "task_rate_mib": _rate, "task_latency_guard": _on_off,
         "accept_data_loss": _on_off, "max_connections": _positive, "idle_timeout": _count,
         "memory_budget": _size, "io_threads": _count,
         "io": _io_mode, "io_engine": _io_engine, "drive_error_limit": _positive,
         "drive_timeout": _duration, "control_timeout": _positive_duration,
         "control_max_connections": _positive,
         "scrub_interval": _duration, "overcommit_warn": _ratio, "metrics": _metrics,
         "tls": _choice(TLS_MODES), "tls_cert": _text, "tls_key": _text, "tls_ca": _text,
         "tls_verify_peer": _on_off, "backend": _choice(BACKENDS), "rados_conf": _text,
         "rados_pool": _text, "rados_namespace": _text, "rados_user": _text,
         "rados_timeout": _positive_duration, "standby": _on_off, "heartbeat": _udp, "peer": _udp,
         "takeover_after": _seconds}


def _flatten(data: dict, where: str) -> dict:
    """TOML -> {Config field: value}; unknown keys and tables are errors."""
    out, unknown = {}, []
    for k, v in data.items():
        if k in SECTIONS and isinstance(v, dict):
            for sk, sv in v.items():
                if sk in SECTIONS[k]:
                    out[SECTIONS[k][sk]] = sv
                else:
                    unknown.append(f"{k}.{sk}")
        elif k in KEYS:
            out[k] = v
        else:
            unknown.append(k)
    if unknown:
        raise argparse.ArgumentTypeError(f"{where}: unknown keys {sorted(unknown)}")
    return out


class Parser(argparse.ArgumentParser):
    """Errors on ONE line (a service log shows it as the reason the start failed)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def load(argv: list[str] | None = None) -> Config:
    ap = Parser(prog="vsand", description="vsand block-storage daemon")
    ap.add_argument("--config", help="TOML file with the same keys as the flags (state_dir, drives, ...)")
    ap.add_argument("--state-dir")
    ap.add_argument("--drives", type=_positive, help="number of simulated drives to create on first start")
    ap.add_argument("--drive-size", type=_size, help="size of each simulated drive (e.g. 4G)")
    ap.add_argument("--drive", action="append", dest="drive_paths", help="explicit drive path (repeatable)")
    ap.add_argument("--nbd-socket")
    ap.add_argument("--listen", type=_listen, help="TCP HOST:PORT for NBD ('none' to disable)")
    ap.add_argument("--nbd-allow", type=_network, action="append", metavar="ADDR[/PREFIX]",
                    help="serve NBD over TCP only to clients from this address or network "
                         "(repeatable; default: any). Others get ERR_POLICY for every option. "
                         "UNIX socket clients are governed by the socket's file permissions")
    ap.add_argument("--control", help="control socket path")
    ap.add_argument("--default-export")
    ap.add_argument("--log-level", choices=LOG_LEVELS)
    ap.add_argument("--task-rate-mib", type=_rate, metavar="MIB",
                    help="limit background copies to MIB MiB/s (0 = unlimited, the default)")
    ap.add_argument("--latency-guard", dest="task_latency_guard", type=_on_off, metavar="on|off",
                    help="background tasks yield to NBD traffic (default on)")
    ap.add_argument("--accept-data-loss", dest="accept_data_loss", action="store_const", const=True,
                    help="start even when a missing, short or foreign drive holds data that no "
                         "redundancy covers (those segments then fail with EIO); without it such "
                         "a start is refused with the reason")
    ap.add_argument("--max-connections", type=_positive, metavar="N",
                    help="NBD connections at once (default 1000); more are refused with ERR_POLICY")
    ap.add_argument("--idle-timeout", type=_count, metavar="SECONDS",
                    help="close an NBD connection that sent no request for this long "
                         "(default 0: never; kernel and QEMU clients stay idle for the life of a mount)")
    ap.add_argument("--memory-budget", type=_size, metavar="SIZE",
                    help="memory all NBD connections together may use for replies, reads in "
                         "flight and WRITE payloads beyond 128 KiB each (default 256M)")
    ap.add_argument("--io-threads", type=_count, metavar="N",
                    help="worker threads for drive I/O that may block the event loop: reads the "
                         "page cache misses, writes to direct drives, commits (default 16; 0 runs "
                         "it all on the event loop, one call at a time)")
    ap.add_argument("--io-engine", type=_io_engine, metavar="auto|uring|threads",
                    help="how drive reads the page cache misses are done: io_uring, worker "
                         "threads, or auto (the default: io_uring when the kernel allows it)")
    ap.add_argument("--io", type=_io_mode, metavar="buffered|direct|auto",
                    help="drive I/O: through the page cache, O_DIRECT, or auto (the default: "
                         "direct for block devices, buffered for image files)")
    ap.add_argument("--drive-error-limit", type=_positive, metavar="N",
                    help="I/O errors a drive may give before it is failed (default 4); a drive "
                         "that misses a write of a RAID1/5 stripe is failed at once")
    ap.add_argument("--drive-timeout", type=_duration, metavar="DURATION",
                    help="a drive read or write that takes longer counts as an I/O error (its "
                         "data is served from redundancy): 30s (the default), 5s, 2m, or off")
    ap.add_argument("--control-timeout", type=_positive_duration, metavar="DURATION",
                    help="close a control connection that has not sent a whole request in this "
                         "time: 10s (the default), 1m, ...")
    ap.add_argument("--control-max-connections", type=_positive, metavar="N",
                    help="control (vsanctl) connections at once (default 64); more get an error")
    ap.add_argument("--scrub-interval", type=_duration, metavar="DURATION",
                    help="start a scrub this long after the last one ended (or after this start, "
                         "when none is recorded): 30d (the default), 12h, 90m, 45s, or off")
    ap.add_argument("--overcommit-warn", type=_ratio, metavar="RATIO",
                    help="warn (in the reply and the log) when LUNs, snapclones and reserved "
                         "snapshots would need more than RATIO x an LDAD's drive space once "
                         "written: 1.0 (the default), 1.5, ... or off")
    ap.add_argument("--metrics", type=_metrics, metavar="HOST:PORT",
                    help="serve Prometheus metrics (http://HOST:PORT/metrics) and the status page "
                         "(http://HOST:PORT/) over HTTP; a port alone listens on 127.0.0.1; "
                         "default off")
    ap.add_argument("--tls", type=_choice(TLS_MODES), metavar="off|on|require",
                    help="TLS for NBD over TCP (STARTTLS): off (the default), on (offered, plain "
                         "text still served) or require (nothing is listed or served before TLS); "
                         "UNIX sockets stay plain")
    ap.add_argument("--tls-cert", metavar="PEM", help="the server's certificate (chain)")
    ap.add_argument("--tls-key", metavar="PEM",
                    help="the server certificate's private key (default: in the --tls-cert file)")
    ap.add_argument("--tls-ca", metavar="PEM", help="CA certificate(s) that sign client certificates")
    ap.add_argument("--tls-verify-peer", type=_on_off, metavar="on|off",
                    help="on: a client must present a certificate signed by --tls-ca (default off)")
    ap.add_argument("--backend", type=_choice(BACKENDS), metavar="files|rados",
                    help="where the drives live: files (image files or block devices, the "
                         "default) or rados (objects of a Ceph RADOS pool: the [rados] table)")
    ap.add_argument("--rados-conf", metavar="PATH", help="ceph.conf of the RADOS cluster")
    ap.add_argument("--rados-pool", metavar="POOL", help="RADOS pool of the PSEG and metadata objects")
    ap.add_argument("--rados-namespace", metavar="NS", help="RADOS namespace (default: none)")
    ap.add_argument("--rados-timeout", type=_positive_duration, metavar="DURATION",
                    help="a RADOS call that takes longer fails with EIO: 30s (the default), 5s, ...")
    ap.add_argument("--standby", action="store_const", const=True,
                    help="backend rados: wait as the standby of the daemon holding the pool and "
                         "take it over when its heartbeats and its watch are gone")
    ap.add_argument("--heartbeat", type=_udp, metavar="HOST:PORT",
                    help="UDP address this daemon sends heartbeats from and hears its peer on")
    ap.add_argument("--peer", type=_udp, metavar="HOST:PORT", help="the other daemon's heartbeat address")
    ap.add_argument("--takeover-after", type=_seconds, metavar="SECONDS",
                    help="a standby takes over after this long without heartbeats (default 3) "
                         "once the owner's watch is gone too")
    args = ap.parse_args(argv)
    cfg = Config()
    if args.config:
        try:
            with open(args.config, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            ap.error(f"cannot read the config file {args.config}: {e.strerror or e}")
        except tomllib.TOMLDecodeError as e:
            ap.error(f"{args.config}: not valid TOML: {e}")
        try:
            data = _flatten(data, args.config)
        except argparse.ArgumentTypeError as e:
            ap.error(str(e))
        for k, v in data.items():
            try:
                setattr(cfg, k, CHECK[k](v) if k in CHECK else v)
            except argparse.ArgumentTypeError as e:
                ap.error(f"{args.config}: {TOML_NAME.get(k, k)}: {e}")
    for k in FLAGS:
        v = getattr(args, k, None)
        if v is not None:
            setattr(cfg, k, v)
    if cfg.backend == "rados" and not (cfg.rados_conf and cfg.rados_pool):
        ap.error("backend rados needs the cluster's ceph.conf and a pool: rados.conf and "
                 "rados.pool in the config file, or --rados-conf and --rados-pool")
    if cfg.standby and cfg.backend != "rados":
        ap.error("--standby needs backend rados: only a shared backend can be taken over")
    if cfg.standby and not cfg.heartbeat:
        ap.error("--standby needs rados.heartbeat (--heartbeat HOST:PORT) to hear the active daemon")
    return cfg.finish()
