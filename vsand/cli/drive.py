"""`vsanctl drive ...`: the pool's drives."""

from __future__ import annotations

import os

from .ctl import size, size_arg, table


def register(sub, common) -> None:
    g = sub.add_parser("drive", help="drive commands (list, fail, add, remove, replace)",
                       description="Inspect the pool's drives; fail, add, remove or replace one.")
    gs = g.add_subparsers(title="commands", dest="drive_cmd", metavar="COMMAND", required=True)
    p = gs.add_parser("list", parents=[common], help="list the pool's drives",
                      description="List the pool's drives with their usage and state.")
    p.set_defaults(func=drive_list, cmd="drive list", _parser=p)
    p = gs.add_parser("fail", parents=[common], help="fail a drive (its RAID1/5 data runs degraded)",
                      description="Mark drive INDEX failed, durably: vsand stops using it, RAID1 "
                                  "and RAID5 LUNs read their data from redundancy, RAID0 LUNs with "
                                  "data on it give EIO for that data.")
    p.add_argument("index", type=int, help="the drive's INDEX (see `drive list`)")
    p.set_defaults(func=drive_fail, cmd="drive fail", _parser=p)
    p = gs.add_parser("add", parents=[common], help="add a drive to the pool",
                      description="Add a drive: its label is written, it joins an RSS of its "
                                  "LDAD (the smallest with fewer than 11 drives), and its capacity "
                                  "is usable at once; a rebuild that lacked room starts. PATH "
                                  "may be a block device or an image file (created with --size "
                                  "when missing); without PATH, the daemon's next simulated "
                                  "drive under its state directory. A drive of another pool is "
                                  "refused. Data already stored does not move onto it.")
    p.add_argument("path", nargs="?", metavar="PATH", help="the drive (default: the next simulated drive)")
    p.add_argument("--size", type=size_arg, metavar="SIZE", help="size of an image file to create (e.g. 4G)")
    p.add_argument("--ldad", default="default", help="the LDAD it joins (default: default)")
    p.set_defaults(func=drive_add, cmd="drive add", _parser=p)
    p = gs.add_parser("remove", parents=[common], help="empty a drive and let it go",
                      description="Remove drive INDEX: a metadata copy on it moves to another "
                                  "drive, it takes no new data, the rebuild task copies what it "
                                  "holds to the other drives of its RSS (RAID0 too), then the pool "
                                  "lets it go and wipes its label; `drive list` shows `leaving, N "
                                  "to move`, then `removed`. Refused, with the reason, when the "
                                  "rest of its RSS cannot hold its data.")
    p.add_argument("index", type=int, help="the drive's INDEX (see `drive list`)")
    p.set_defaults(func=drive_remove, cmd="drive remove", _parser=p)
    p = gs.add_parser("replace", parents=[common], help="add a drive, then remove drive INDEX",
                      description="`drive add PATH` into drive INDEX's LDAD, then `drive remove "
                                  "INDEX`: what INDEX holds (rebuilt from redundancy when it "
                                  "failed) moves to the other drives of its RSS, the new one "
                                  "first. Refused before anything is added when INDEX cannot be "
                                  "removed.")
    p.add_argument("index", type=int, help="the drive to replace (see `drive list`)")
    p.add_argument("path", nargs="?", metavar="PATH", help="the new drive (default: the next simulated drive)")
    p.add_argument("--size", type=size_arg, metavar="SIZE", help="size of an image file to create (e.g. 4G)")
    p.set_defaults(func=drive_replace, cmd="drive replace", _parser=p)


def drive_list(ctx, args) -> int:
    return ctx.emit(ctx.call("drive.list"), render)


def drive_fail(ctx, args) -> int:
    return ctx.emit(ctx.call("drive.fail", index=args.index),
                    lambda d: f"drive {d['index']} ({d['path']}) failed: {d['state']}")


def _state(d: dict) -> str:
    left = d.get("rebuild_left", 0)
    if d.get("state") in ("removed", "leaving"):
        return f"leaving, {left} to move" if d["state"] == "leaving" else "removed"
    if not d.get("failed"):
        return "ok"
    return f"FAILED, {left} to rebuild" if left else "FAILED, rebuilt"


def drive_add(ctx, args) -> int:
    kw = {k: v for k, v in (("drive", args.path and os.path.abspath(args.path)),
                            ("size", args.size), ("ldad", args.ldad)) if v is not None}
    return ctx.emit(ctx.call("drive.add", **kw),
                    lambda d: f"drive {d['index']} ({d['path']}, {size(d['size'])}) added: "
                              f"{d['free_psegs']} free PSEGs")


def drive_remove(ctx, args) -> int:
    return ctx.emit(ctx.call("drive.remove", index=args.index),
                    lambda d: f"drive {d['index']} ({d['path']}): {_state(d)}")


def drive_replace(ctx, args) -> int:
    kw = {k: v for k, v in (("drive", args.path and os.path.abspath(args.path)),
                            ("size", args.size)) if v is not None}
    r = ctx.call("drive.replace", index=args.index, **kw)
    return ctx.emit(r, lambda x: f"drive {x['added']['index']} ({x['added']['path']}) added; "
                                 f"drive {x['removing']['index']}: {_state(x['removing'])}")


def render(drives: list) -> str:
    if not drives:
        return "no drives"
    rows = []
    for d in drives:
        total, free = d.get("psegs", 0), d.get("free_psegs", 0)
        use = f"{100 * (total - free) / total:.1f}%" if total else "-"
        rows.append([d.get("index", "-"), d.get("path", "-"), size(d.get("size")), use,
                     f"{free}/{total}", d.get("ldad", "-"),
                     _state(d), d.get("io_errors", 0),
                     "yes" if d.get("quorum") else ""])
    out = table(["INDEX", "PATH", "SIZE", "USED", "FREE PSEGS", "LDAD", "STATE", "ERRORS", "QUORUM"],
                rows, right=(0, 2, 3, 4, 7))
    why = [f"drive {d.get('index')}: {d['state']}" for d in drives
           if d.get("failed") and str(d.get("state", "")).startswith("failed")]
    return "\n".join([out, *why])
