"""Daemon settings: embedded defaults < TOML file < command-line flags."""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, field, fields

from .units import parse_size


@dataclass
class Config:
    state_dir: str = "/var/lib/vsand"
    drives: int = 8                       # simulated drives created on first start
    drive_size: int = 4 << 30
    drive_paths: list[str] = field(default_factory=list)   # explicit drives instead
    nbd_socket: str = ""                  # default: STATE_DIR/nbd.sock
    listen: str = "127.0.0.1:10809"       # "" or "none" disables TCP
    control: str = ""                     # default: STATE_DIR/control.sock
    default_export: str = ""              # served for the empty export name
    log_level: str = "info"

    def finish(self) -> "Config":
        self.state_dir = os.path.abspath(self.state_dir)
        self.nbd_socket = self.nbd_socket or os.path.join(self.state_dir, "nbd.sock")
        self.control = self.control or os.path.join(self.state_dir, "control.sock")
        if self.listen.lower() == "none":
            self.listen = ""
        return self

    def tcp(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        return host, int(port)


KEYS = {f.name for f in fields(Config)}


def _size(text) -> int:
    try:
        n = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return n


def load(argv: list[str] | None = None) -> Config:
    ap = argparse.ArgumentParser(prog="vsand", description="vsand block-storage daemon")
    ap.add_argument("--config", help="TOML file with the same keys as the flags (state_dir, drives, ...)")
    ap.add_argument("--state-dir")
    ap.add_argument("--drives", type=int, help="number of simulated drives to create on first start")
    ap.add_argument("--drive-size", type=_size, help="size of each simulated drive (e.g. 4G)")
    ap.add_argument("--drive", action="append", dest="drive_paths", help="explicit drive path (repeatable)")
    ap.add_argument("--nbd-socket")
    ap.add_argument("--listen", help="TCP HOST:PORT for NBD ('none' to disable)")
    ap.add_argument("--control", help="control socket path")
    ap.add_argument("--default-export")
    ap.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    args = ap.parse_args(argv)
    cfg = Config()
    if args.config:
        with open(args.config, "rb") as f:
            data = tomllib.load(f)
        unknown = set(data) - KEYS
        if unknown:
            ap.error(f"{args.config}: unknown keys {sorted(unknown)}")
        for k, v in data.items():
            try:
                setattr(cfg, k, _size(v) if k == "drive_size" else v)
            except argparse.ArgumentTypeError as e:
                ap.error(f"{args.config}: {k}: {e}")
    for k in KEYS:
        v = getattr(args, k, None)
        if v is not None:
            setattr(cfg, k, v)
    return cfg.finish()
