"""`vsanctl`: the administrator's tool for a running vsand daemon.

Its commands are listed by `vsanctl --help` and in README.md (a test keeps that list
complete).

It talks to the daemon over its control socket (--control PATH, else $VSAN_CONTROL,
else /var/lib/vsand/control.sock). An error is one line on stderr; the exit status
says which kind (EXIT_STATUS below, also in --help).
Each command group lives in its own module (vsand/cli/<group>.py).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..control.client import DEFAULT_TIMEOUT
from .ctl import DEFAULT_CONTROL, ENV_CONTROL, PROG, CliError, Ctx, Parser, resolve_control

EXIT_STATUS = """exit status:
  0  success
  1  the daemon refused the request (the reason is on stderr), or a waited-for task failed
  2  usage error
  3  the daemon cannot be reached: no control socket, or nobody listening on it
  4  permission denied on the control socket
  5  the connection was lost mid-request (daemon stopped or killed)
  6  the reply was not a vsand control reply (malformed or oversized)
  7  no reply within --timeout seconds"""

GROUPS = ("status", "lun", "du", "snapshot", "snapclone", "diff", "task", "pool", "drive")


def common_options() -> argparse.ArgumentParser:
    """--json and --control, accepted before or after the command (SUPPRESS keeps the
    top-level value when a subcommand does not repeat the option)."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print machine-readable JSON on stdout")
    c.add_argument("--control", metavar="PATH", default=argparse.SUPPRESS,
                   help=f"daemon control socket (default: ${ENV_CONTROL} or {DEFAULT_CONTROL})")
    c.add_argument("--timeout", metavar="SECONDS", type=timeout_arg, default=argparse.SUPPRESS,
                   help=TIMEOUT_HELP)
    return c


TIMEOUT_HELP = f"give up on a reply after SECONDS (default {DEFAULT_TIMEOUT:g}; exit 7)"


def timeout_arg(text: str) -> float:
    try:
        t = float(text)
    except ValueError:
        t = -1.0
    if not 0 < t < 1e9:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return t


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog=PROG, description="Manage a running vsand daemon: LUNs, snapshots, snapclones, tasks, drives.",
                epilog="Run 'vsanctl COMMAND --help' for a command's options.\n\n" + EXIT_STATUS,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", default=False,
                    help="print machine-readable JSON on stdout")
    ap.add_argument("--control", metavar="PATH", default=None,
                    help=f"daemon control socket (default: ${ENV_CONTROL} or {DEFAULT_CONTROL})")
    ap.add_argument("--timeout", metavar="SECONDS", type=timeout_arg, default=DEFAULT_TIMEOUT,
                    help=TIMEOUT_HELP)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    ap.set_defaults(_parser=ap)
    sub = ap.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    common = common_options()
    for g in GROUPS:
        importlib.import_module(f"{__package__}.{g}").register(sub, common)
    return ap


def relative_sizes(argv: list[str]) -> list[str]:
    """`lun resize NAME -1G`: argparse takes "-1G" for an option. It is the last
    positional argument, so it moves after a "--" at the end, where options that
    followed it (--allow-shrink) no longer stand behind it."""
    if "resize" not in argv or "--" in argv:
        return argv
    neg = [a for a in argv if a[:1] == "-" and a[1:2].isdigit()]
    return [a for a in argv if a not in neg] + (["--", *neg] if neg else [])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(relative_sizes(sys.argv[1:] if argv is None else argv))
    ctx = Ctx(resolve_control(args.control), args.json, args.cmd, args.timeout)
    try:
        return args.func(ctx, args)
    except CliError as e:
        sys.stdout.flush()
        print(f"{PROG}: {e.message}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `vsanctl lun list | head`: stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
