"""Plumbing shared by the `vsanctl` command groups (status.py, lun.py, drive.py).

It may import only the control protocol (schema, client) and units: vsanctl talks
to the daemon and never opens storage itself.
"""

from __future__ import annotations

import argparse
import errno as _errno
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence

from ..control.client import DEFAULT_TIMEOUT, ControlError, request
from ..control.schema import OPS
from ..units import format_size, parse_size

PROG = "vsanctl"
DEFAULT_CONTROL = "/var/lib/vsand/control.sock"   # the daemon's default state dir
ENV_CONTROL = "VSAN_CONTROL"
MAX_SIZE = (1 << 63) - 1


# Exit status by ControlError.kind (documented in vsanctl.py and --help); 2 is argparse's
# usage error.
EXIT = {"refused": 1, "unreachable": 3, "denied": 4, "lost": 5, "protocol": 6, "timeout": 7}


class CliError(Exception):
    """One line for stderr and an exit code (EXIT; 1: the daemon said no)."""

    def __init__(self, message: str, code: int = EXIT["refused"]):
        super().__init__(message)
        self.message = message
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on ONE line: ``vsanctl: lun create: <why> (see ...)``."""

    def error(self, message: str):
        cmd = self.prog.removeprefix(PROG).strip()
        where = f"{cmd}: " if cmd else ""
        self.exit(2, f"{PROG}: {where}{message} (see '{self.prog} --help')\n")


def usage_error(args: argparse.Namespace, message: str):
    """A usage problem found after parsing (exit 2, like argparse's own)."""
    args._parser.error(message)


# ---- argument types -------------------------------------------------------------------
def size_arg(text: str) -> int:
    """SIZE: 512M, 4G, 1T (binary multiples) or bytes. Alignment is the pool's business."""
    try:
        n = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    except OverflowError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512M, 4G, 1T)") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, not {text!r}")
    if n > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"size {text!r} is too large")
    return n


def on_off(text: str) -> bool:
    t = text.strip().lower()
    if t in ("on", "yes", "true", "1"):
        return True
    if t in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, not {text!r}")


# ---- talking to the daemon ------------------------------------------------------------
class Ctx:
    def __init__(self, control: str, as_json: bool, cmd: str, timeout: float = DEFAULT_TIMEOUT):
        self.control = control
        self.timeout = timeout
        self.json = as_json
        self.cmd = cmd            # "lun create", for error lines
        self.out = sys.stdout

    def call(self, op: str, **args):
        assert op in OPS, op
        args = {k: v for k, v in args.items() if v is not None}
        try:
            result, warnings = request(self.control, op, self.timeout, args)
        except ControlError as e:
            raise CliError(self._explain(e), EXIT[e.kind]) from None
        for w in warnings:           # done, but worth knowing: stderr, so --json output stays JSON
            print(f"{PROG}: warning: {w}", file=sys.stderr)
        return result

    def _explain(self, e: ControlError) -> str:
        cause = e.cause
        if cause is not None:
            # connect() failed: the daemon is not there (or not ours to talk to)
            where = f"the vsand daemon at {self.control}"
            if cause.errno in (_errno.ENOENT, _errno.ECONNREFUSED, _errno.ENOTSOCK, _errno.ENOTDIR):
                why = "no control socket" if cause.errno in (_errno.ENOENT, _errno.ENOTDIR) else \
                    (cause.strerror or str(cause)).lower()
                return (f"cannot reach {where} ({why}): is vsand running? "
                        f"(point vsanctl at its control socket with --control PATH or ${ENV_CONTROL})")
            if cause.errno in (_errno.EACCES, _errno.EPERM):
                return f"cannot reach {where}: permission denied (the control socket is 0600; run as its owner, e.g. root)"
            return f"cannot reach {where}: {cause.strerror or cause}"
        return f"{self.cmd}: {e}"

    # ---- output ------------------------------------------------------------------------
    def emit(self, result, human: Callable[[object], str]) -> int:
        """JSON on stdout with --json, else the human rendering of the result."""
        if self.json:
            text = json.dumps(result, indent=2, sort_keys=True)
        else:
            text = human(result)
        if text:
            print(text, file=self.out)
        return 0


def resolve_control(flag: str | None) -> str:
    return flag or os.environ.get(ENV_CONTROL) or DEFAULT_CONTROL


# ---- rendering ------------------------------------------------------------------------
def size(n) -> str:
    return format_size(int(n)) if isinstance(n, int) else "-"


def amount(n, exact: bool) -> str:
    """A byte count: in binary units for people, the exact integer with --bytes."""
    if exact:
        return str(n) if isinstance(n, int) else "-"
    return size(n)


def yes_no(v) -> str:
    return "yes" if v else "no"


def table(headers: Sequence[str], rows: Iterable[Sequence], right: Iterable[int] = ()) -> str:
    """Plain aligned columns; the columns listed in `right` are right-aligned (numbers)."""
    rows = [[str(c) for c in r] for r in rows]
    right = set(right)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells):
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def kv(pairs: Iterable[tuple[str, object]]) -> str:
    """A two-column "key  value" listing for one object."""
    pairs = [(k, str(v)) for k, v in pairs]
    w = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in pairs)
