"""`vsanctl diff`: the extents a backup of an LD must copy (changed-block tracking)."""

from __future__ import annotations

from .ctl import size, table


def register(sub, common) -> None:
    p = sub.add_parser("diff", parents=[common], help="list the extents that changed since a snapshot",
                       description="List the extents of NEWER that may differ from OLDER (an LD of "
                                   "NEWER's sharing chain), from the maps alone: every extent not "
                                   "listed reads the same in both. Without --from, NEWER's allocated "
                                   "extents (what a full backup copies). Over NBD the same is block "
                                   "status context vsand:changed:OLDER on export NEWER.")
    p.add_argument("name", metavar="NEWER")
    p.add_argument("--from", dest="since", metavar="OLDER",
                   help="a snapshot (or any LD) of NEWER's sharing chain")
    p.add_argument("--bytes", action="store_true", help="offsets and lengths in bytes")
    p.set_defaults(func=diff, cmd="diff", _parser=p)


def diff(ctx, a) -> int:
    res = ctx.call("diff", name=a.name, since=a.since)
    return ctx.emit(res, lambda r: render(r, a.bytes))


def render(r: dict, exact: bool) -> str:
    unit = str if exact else size
    ext = r["extents"]
    what = f"{r['name']} since {r['since']}" if r["since"] else f"{r['name']} (allocated)"
    total = (f"total: {unit(r['changed'])} in {len(ext)} extent{'s' * (len(ext) != 1)} "
             f"of {unit(r['size'])}, {what}")
    if not ext:
        return total
    return table(["OFFSET", "LENGTH"], [[unit(o), unit(n)] for o, n in ext], right=(0, 1)) + "\n" + total
