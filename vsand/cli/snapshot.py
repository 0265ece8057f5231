"""`vsanctl snapshot ...` and `vsanctl tree`: point-in-time copies and sharing chains."""

from __future__ import annotations

from .ctl import size, table
from .lun import render_one


def register(sub, common) -> None:
    g = sub.add_parser("snapshot", help="snapshot commands (create, delete)",
                       description="Writable point-in-time copies that share data with their source.")
    gs = g.add_subparsers(title="commands", dest="snap_cmd", metavar="COMMAND", required=True)
    p = gs.add_parser("create", parents=[common], help="snapshot a LUN or a snapshot",
                      description="Create NAME as a snapshot of SOURCE (a LUN or another snapshot). "
                                  "It is exported over NBD at once and is writable.")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--reserve", action="store_true",
                   help="reserve space for a full copy now (fails if the pool is short); "
                        "otherwise space is taken on demand and the snapshot is invalidated "
                        "if it runs out")
    p.set_defaults(func=create, cmd="snapshot create", _parser=p)
    p = gs.add_parser("delete", parents=[common], help="delete a snapshot (anywhere in a chain)",
                      description="Delete a snapshot; its data passes to older snapshots that need it.")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=delete, cmd="snapshot delete", _parser=p)

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
    res = ctx.call("snapshot.delete", name=a.name)
    return ctx.emit(res, lambda r: f"deleted {r.get('deleted', a.name)}")


def tree(ctx, a) -> int:
    def render(rows):
        body = [[r["name"], r["owned"], r["shared"], size(r["allocated"]), r["space"],
                 "INVALID" if r["invalid"] else "ok"] for r in rows]
        return table(["LD (chain order)", "OWNED", "SHARED", "ALLOCATED", "SPACE", "STATE"], body,
                     right=(1, 2, 3))
    return ctx.emit(ctx.call("tree", name=a.name), render)



