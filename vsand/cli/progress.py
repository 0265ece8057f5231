"""Following a background task until it ends: a rich progress bar on a terminal,
one JSON object per poll with --json, a plain line every few seconds otherwise.

Exit status: 0 when the task is done, 1 (with the reason on stderr) when it failed
or was cancelled. Ctrl-C stops the waiting, not the task."""

from __future__ import annotations

import json
import time

from .ctl import CliError, size

POLL = 0.2             # seconds between task.show calls (5 Hz)
PLAIN_EVERY = 2.0      # seconds between lines when nobody watches a terminal
FINISHED = ("done", "failed", "cancelled")


def wait(ctx, task_id: int, poll: float = POLL) -> int:
    if ctx.json:
        info = _loop(ctx, task_id, poll, lambda i: print(json.dumps(i, sort_keys=True), file=ctx.out, flush=True))
    elif ctx.out.isatty():
        info = _rich(ctx, task_id, poll)
    else:
        info = _plain(ctx, task_id, poll)
    return outcome(ctx, info)


def outcome(ctx, info: dict) -> int:
    if info["state"] == "done":
        return 0
    what = "was cancelled" if info["state"] == "cancelled" else "failed"
    why = f": {info['error']}" if info.get("error") else ""
    raise CliError(f"{ctx.cmd}: task {info['id']} ({info['kind']} {info['target']}) {what}{why}")


def _loop(ctx, task_id, poll, show) -> dict:
    while True:
        info = ctx.call("task.show", id=task_id)
        show(info)
        if info["state"] in FINISHED:
            return info
        time.sleep(poll)


def _plain(ctx, task_id, poll) -> dict:
    last = {"at": -PLAIN_EVERY, "key": None}

    def show(info):
        now = time.monotonic()
        key = (info["state"], info.get("phase"))
        if key != last["key"] or now - last["at"] >= PLAIN_EVERY or info["state"] in FINISHED:
            print(line(info), file=ctx.out, flush=True)
            last.update(at=now, key=key)
    return _loop(ctx, task_id, poll, show)


def _rich(ctx, task_id, poll) -> dict:
    from rich.console import Console  # only here: vsanctl starts fast without it
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    cols = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.completed}/{task.total} seg"), TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"))
    with Progress(*cols, console=Console(file=ctx.out), auto_refresh=False) as bar:
        handle = None

        def show(info):
            nonlocal handle
            desc = f"task {info['id']} {info['kind']} {info['target']} [{info['state']}" + \
                   (f", {info['phase']}]" if info.get("phase") and info["state"] == "running" else "]")
            fields = {"total": max(1, info["total"]), "completed": info["done"],
                      "description": escape(desc), "rate": f"{mib_s(info):.1f} MiB/s",
                      "eta": eta(info.get("eta"))}
            if handle is None:
                handle = bar.add_task(**fields)
            else:
                bar.update(handle, **fields)
            bar.refresh()
        return _loop(ctx, task_id, poll, show)


# ---- rendering shared with `task list/show` ------------------------------------------------
def eta(seconds) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def mib_s(info: dict) -> float:
    """The recent rate while running; the average over the run once finished."""
    if info["state"] != "running" and info.get("started") and info.get("finished"):
        span = info["finished"] - info["started"]
        return info.get("bytes", 0) / (1 << 20) / span if span > 0 else 0.0
    return info.get("mib_s") or 0.0


def percent(info: dict) -> str:
    total = info.get("total") or 0
    if info.get("state") == "done":
        return "100%"
    return f"{100 * info.get('done', 0) / total:.0f}%" if total else "-"


def line(info: dict) -> str:
    out = (f"task {info['id']} {info['kind']} {info['target']}: {info['state']}"
           + (f" ({info['phase']})" if info.get("phase") and info["state"] == "running" else "")
           + f", {info['done']}/{info['total']} segments ({percent(info)}), {size(info.get('bytes', 0))} copied")
    if info["state"] == "running":
        out += f", {mib_s(info):.1f} MiB/s, ETA {eta(info.get('eta'))}"
    elif info["state"] == "done":
        out += f", {mib_s(info):.1f} MiB/s on average"
    if info.get("error"):
        out += f": {info['error']}"
    return out
