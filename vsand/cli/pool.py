"""`vsanctl pool ...`: pool-wide settings."""

from __future__ import annotations

from ..control.schema import POOL_SETTINGS
from .ctl import kv


def register(sub, common) -> None:
    g = sub.add_parser("pool", help="pool settings, rebuild, level, scrub (show, set, rebuild, level, scrub)",
                       description="Pool-wide settings; start a rebuild, leveling or a scrub.")
    gs = g.add_subparsers(title="commands", dest="pool_cmd", metavar="COMMAND", required=True)
    p = gs.add_parser("show", parents=[common], help="show the pool's settings",
                      description="Show the pool's settings and the daemon's background-task limits.")
    p.set_defaults(func=show, cmd="pool show", _parser=p)
    known = "; ".join(f"{k}: {' | '.join(v)}" for k, v in POOL_SETTINGS.items())
    p = gs.add_parser("set", parents=[common], help="change a pool setting",
                      description=f"Change a pool setting (durable). Settings: {known}.")
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE")
    p.set_defaults(func=set_, cmd="pool set", _parser=p)
    p = gs.add_parser("rebuild", parents=[common], help="start a rebuild of what failed drives held",
                      description="Start a rebuild task: every RAID1/5 RStore with a member on a "
                                  "failed drive gets a new member on a working drive. One starts "
                                  "by itself when a drive fails; this is for after one ended for "
                                  "want of free space. Follow it with `vsanctl task wait ID`.")
    p.set_defaults(func=rebuild, cmd="pool rebuild", _parser=p)
    p = gs.add_parser("level", parents=[common], help="even out the drives' use",
                      description="Start a leveling task: PSEGs move from the fullest drives of "
                                  "each RSS to the emptiest until every drive's used fraction is "
                                  "within 5 points of the others. One starts by itself after a "
                                  "drive is added and after a rebuild or removal ends. Refused, "
                                  "with the reason, while failed or leaving drives have data to "
                                  "move and when the pool is level. Follow it with `vsanctl task "
                                  "wait ID`.")
    p.set_defaults(func=level, cmd="pool level", _parser=p)
    p = gs.add_parser("scrub", parents=[common], help="check and repair every RAID1/5 stripe",
                      description="Start a scrub task: every allocated RAID1/RAID5 stripe is "
                                  "read; a member that cannot be read is written again from "
                                  "redundancy, RAID5 parity that disagrees is recomputed from "
                                  "the data, a RAID1 second copy that differs takes the first "
                                  "copy's bytes. Read errors count against their drive. What "
                                  "was repaired is logged; the task shows how many. Follow it "
                                  "with `vsanctl task wait ID`.")
    p.set_defaults(func=scrub, cmd="pool scrub", _parser=p)


def show(ctx, a) -> int:
    return ctx.emit(ctx.call("pool.get"), render)


def set_(ctx, a) -> int:
    res = ctx.call("pool.set", key=a.key, value=a.value)
    return ctx.emit(res, lambda r: f"{a.key} = {r['settings'].get(a.key)}")


def rebuild(ctx, a) -> int:
    res = ctx.call("pool.rebuild")
    return ctx.emit(res, lambda r: f"rebuild started as task {r['id']}: {r['total']} member(s) to rebuild")


def level(ctx, a) -> int:
    res = ctx.call("pool.level")
    return ctx.emit(res, lambda r: f"leveling started as task {r['id']}: about {r['total']} PSEG move(s)")


def scrub(ctx, a) -> int:
    res = ctx.call("pool.scrub")
    return ctx.emit(res, lambda r: f"scrub started as task {r['id']}: {r['total']} stripe(s) to check")


def render(r: dict) -> str:
    defaults = set(r.get("defaults", ()))
    rows = [(k, f"{v}" + (" (default)" if k in defaults else "")
             + (f"   [{' | '.join(r['choices'][k])}]" if k in r.get("choices", {}) else ""))
            for k, v in sorted(r.get("settings", {}).items())]
    t = r.get("tasks", {})
    rows.append(("task rate limit", f"{t['rate_mib']} MiB/s" if t.get("rate_mib") else "unlimited"))
    rows.append(("latency guard", "on" if t.get("latency_guard") else "off"))
    return kv(rows)
