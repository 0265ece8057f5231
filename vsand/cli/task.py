"""`vsanctl task ...`: list, show, wait for, cancel and re-pace background tasks."""

from __future__ import annotations

import argparse
from datetime import datetime

from . import progress
from .ctl import kv, size, table


def task_id(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a task id: {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"not a task id: {text!r}")
    return n


def rate_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of MiB/s: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"rate must be >= 0 (0 = unlimited), not {text!r}")
    return n


RATE_HELP = "limit this task to MIB MiB/s (0 = only the daemon's [tasks] rate_mib)"


def register(sub, common) -> None:
    g = sub.add_parser("task", help="background task commands (list, show, wait, cancel, set)",
                       description="Background tasks (e.g. the copy that makes a snapclone "
                                   "independent) run inside the daemon, survive restarts and "
                                   "yield to NBD traffic.")
    gs = g.add_subparsers(title="commands", dest="task_cmd", metavar="COMMAND", required=True)

    def cmd(name, func, **kw):
        p = gs.add_parser(name, parents=[common], **kw)
        p.set_defaults(func=func, cmd=f"task {name}", _parser=p)
        return p

    cmd("list", list_, help="list tasks", description="List running, queued and recently finished tasks.")
    p = cmd("show", show, help="show one task", description="Show one task's state and progress.")
    p.add_argument("id", metavar="ID", type=task_id)
    p = cmd("wait", wait, help="follow a task until it ends",
            description="Follow a task until it ends: a progress bar on a terminal, one JSON object "
                        "per poll with --json. Exit 0 when it is done, 1 when it failed or was "
                        "cancelled. Ctrl-C stops waiting, not the task.")
    p.add_argument("id", metavar="ID", type=task_id)
    p = cmd("cancel", cancel, help="cancel a task",
            description="Cancel a task at its next step boundary. A cancelled snapclone copy leaves "
                        "the clone usable but still dependent; 'vsanctl snapclone copy NAME' restarts it.")
    p.add_argument("id", metavar="ID", type=task_id)
    p = cmd("set", set_, help="change a task's rate limit", description="Change a running task's rate limit.")
    p.add_argument("id", metavar="ID", type=task_id)
    p.add_argument("--rate", type=rate_arg, required=True, metavar="MIB", help=RATE_HELP)


# ---- commands ---------------------------------------------------------------------------
def list_(ctx, a) -> int:
    return ctx.emit(ctx.call("task.list"), render_list)


def show(ctx, a) -> int:
    return ctx.emit(ctx.call("task.show", id=a.id), render_one)


def wait(ctx, a) -> int:
    return progress.wait(ctx, a.id)


def cancel(ctx, a) -> int:
    info = ctx.call("task.cancel", id=a.id)
    return ctx.emit(info, lambda i: f"cancelled task {i['id']} ({i['kind']} {i['target']})")


def set_(ctx, a) -> int:
    info = ctx.call("task.set", id=a.id, rate=a.rate)
    return ctx.emit(info, lambda i: f"task {i['id']}: rate limit {rate(i.get('rate'))}")


# ---- rendering --------------------------------------------------------------------------
def rate(r) -> str:
    return f"{r} MiB/s" if r else "none (daemon default)"


def when(t) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def render_list(tasks: list) -> str:
    if not tasks:
        return "no tasks"
    rows = [[i["id"], i["kind"], i["target"],
             i["state"] + (f" ({i['phase']})" if i.get("phase") and i["state"] == "running" else ""),
             f"{i['done']}/{i['total']}", progress.percent(i),
             f"{i.get('mib_s') or 0:.1f}" if i["state"] == "running" else "-",
             progress.eta(i.get("eta")), i.get("error") or ""] for i in tasks]
    return table(["ID", "KIND", "TARGET", "STATE", "SEGMENTS", "DONE", "MIB/S", "ETA", "ERROR"], rows,
                 right=(0, 4, 5, 6))


def render_one(i: dict) -> str:
    rows = [("id", i["id"]), ("kind", i["kind"]), ("target", i["target"]), ("state", i["state"])]
    if i.get("phase") and i["state"] == "running":
        rows.append(("phase", i["phase"]))
    if i.get("error"):
        rows.append(("error", i["error"]))
    rows += [("segments", f"{i['done']}/{i['total']} ({progress.percent(i)})"),
             ("remaining", i.get("remaining", "-")), ("copied", size(i.get("bytes", 0))),
             ("rate", f"{i.get('mib_s') or 0:.1f} MiB/s"), ("eta", progress.eta(i.get("eta"))),
             ("rate limit", rate(i.get("rate"))), ("created", when(i.get("created"))),
             ("started", when(i.get("started"))), ("finished", when(i.get("finished")))]
    return kv(rows)
