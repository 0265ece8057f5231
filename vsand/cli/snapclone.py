"""`vsanctl snapclone ...`: copies usable at once that become independent LUNs once
their background copy (BGCOPY, DESIGN.md §8) finishes."""

from __future__ import annotations

import json

from . import progress
from .lun import render_one
from .task import RATE_HELP, rate_arg


def register(sub, common) -> None:
    g = sub.add_parser("snapclone", help="snapclone commands (create, copy)",
                       description="A snapclone is a point-in-time copy that is exported and "
                                   "writable at once; a background task copies its data so it "
                                   "becomes an independent LUN (see 'vsanctl task').")
    gs = g.add_subparsers(title="commands", dest="clone_cmd", metavar="COMMAND", required=True)
    p = gs.add_parser("create", parents=[common], help="snapclone a LUN or a snapshot",
                      description="Create NAME as a snapclone of SOURCE and start copying it in "
                                  "the background (the task id is printed).")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=create, cmd="snapclone create", _parser=p)
    _copy_options(p)
    p = gs.add_parser("copy", parents=[common], help="restart the copy of a snapclone",
                      description="Start a new background copy for a snapclone that is still "
                                  "dependent (e.g. after 'vsanctl task cancel').")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=copy, cmd="snapclone copy", _parser=p)
    _copy_options(p)


def _copy_options(p) -> None:
    p.add_argument("--rate", type=rate_arg, metavar="MIB", help=RATE_HELP)
    p.add_argument("--wait", action="store_true",
                   help="follow the copy until it ends (exit 1 if it fails); with --json, "
                        "one JSON object per line: the result, then one per poll")


def create(ctx, a) -> int:
    info = ctx.call("snapclone.create", source=a.source, name=a.name, rate=a.rate)
    return _started(ctx, a, info, info["task"],
                    lambda i: f"created snapclone {i['name']} of {a.source}; copying in task {i['task']}\n"
                              f"{render_one({k: v for k, v in i.items() if k != 'task'})}")


def copy(ctx, a) -> int:
    info = ctx.call("snapclone.copy", name=a.name, rate=a.rate)
    return _started(ctx, a, info, info["id"], lambda i: f"copying {i['target']} in task {i['id']}")


def _started(ctx, a, info, task_id, human) -> int:
    if not a.wait:
        return ctx.emit(info, human)
    if ctx.json:
        print(json.dumps(info, sort_keys=True), file=ctx.out, flush=True)
    else:
        print(human(info), file=ctx.out, flush=True)
    return progress.wait(ctx, task_id)
