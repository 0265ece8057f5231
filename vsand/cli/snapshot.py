"""`vsanctl snapshot ...` and `vsanctl tree`: point-in-time copies and sharing chains."""

from __future__ import annotations

from .ctl import size, table
from .lun import FORCE_HELP, deleted, render_one


def register(sub, common) -> None:
    g = sub.add_parser("snapshot", help="snapshot commands (create, delete, rename)",
                       description="Writable point-in-time copies that share data with their source.")
    gs = g.add_subparsers(title="commands", dest="snap_cmd", metavar="COMMAND", required=True)

    def cmd(name, func, help, description):
        p = gs.add_parser(name, parents=[common], help=help, description=description)
        p.set_defaults(func=func, cmd=f"snapshot {name}", _parser=p)
        return p

    p = cmd("create", create, "snapshot a LUN or a snapshot",
            "Create NAME as a snapshot of SOURCE (a LUN or another snapshot). "
            "It is exported over NBD at once and is writable.")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--reserve", action="store_true",
                   help="reserve space for a full copy now (fails if the pool is short); "
                        "otherwise space is taken on demand and the snapshot is invalidated "
                        "if it runs out")
    p = cmd("delete", delete, "delete a snapshot (anywhere in a chain)",
            "Delete a snapshot; its data passes to older snapshots that need it. "
            "Guarded like `lun delete` (--force; never when protected).")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p = cmd("rename", rename, "rename a snapshot",
            "Rename a snapshot. Connected clients go on; new connections use the new export name.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("new_name", metavar="NEW")

    t = sub.add_parser("tree", parents=[common], help="show a sharing chain",
                       description="Show the chain NAME belongs to, with each LD's owned and "
                                   "shared segment counts. Each LD reads what it shares through the "
                                   "next one: oldest to newest, except that a reverted LUN stands "
                                   "right after the snapshot it was reverted to.")
    t.add_argument("name", metavar="NAME")
    t.set_defaults(func=tree, cmd="tree", _parser=t)


def create(ctx, a) -> int:
    info = ctx.call("snapshot.create", source=a.source, name=a.name, reserve=a.reserve or None)
    return ctx.emit(info, lambda i: f"created snapshot {i['name']} of {a.source}\n{render_one(i)}")


def delete(ctx, a) -> int:
    res = ctx.call("snapshot.delete", name=a.name, force=a.force or None)
    return ctx.emit(res, lambda r: deleted("snapshot", r))


def rename(ctx, a) -> int:
    info = ctx.call("snapshot.rename", name=a.name, new_name=a.new_name)
    return ctx.emit(info, lambda i: f"renamed snapshot {a.name} to {i['name']}\n{render_one(i)}")


def tree(ctx, a) -> int:
    def render(rows):
        body = [[r["name"], r["owned"], r["shared"], size(r["allocated"]), r["space"],
                 "INVALID" if r["invalid"] else "ok"] for r in rows]
        return table(["LD (chain order)", "OWNED", "SHARED", "ALLOCATED", "SPACE", "STATE"], body,
                     right=(1, 2, 3))
    return ctx.emit(ctx.call("tree", name=a.name), render)



