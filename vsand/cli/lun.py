"""`vsanctl lun ...`: create, list, show, resize, delete and set LUNs (logical disks)."""

from __future__ import annotations

import argparse

from ..control.schema import KINDS
from .ctl import amount, kv, on_off, size, size_arg, table, usage_error, yes_no

FORCE_HELP = ("delete although clients are connected (they are disconnected), snapshots depend "
              "on it (they keep their data) or it is read-only")
SIZE_HELP = ("size with a binary suffix (512M, 4G, 1T) or in bytes; a multiple of the LUN "
             "granularity, 1 MiB")
KNOWN = {"id", "name", "size", "raid", "ldad", "allocated", "read_only", "protected", "connections", "state",
         "allow_cert", "readonly_for",
         "reverted_to", "kept_as", "dropped_clients",
         "kind", "origin", "provisioned", "referenced", "exclusive", "shared"}
# space figures (vsanctl du --help says what each means)
FIGURES = ("provisioned", "allocated", "referenced", "exclusive", "shared")
DEFAULT_COLUMNS = ("name", "size", "allocated", "raid", "mode", "access", "ldad", "kind", "state")
ACCESS_HELP = ("Access rules apply to NBD connections made after the change; UNIX socket "
               "clients are not subject to them (the socket's file permissions are).")


def register(sub, common) -> None:
    g = sub.add_parser("lun", help="LUN commands (create, list, show, resize, revert, delete, rename, set)",
                       description="Manage LUNs: each is exported over NBD under its own name.")
    gs = g.add_subparsers(title="commands", dest="lun_cmd", metavar="COMMAND", required=True)

    def cmd(name, func, **kw):
        p = gs.add_parser(name, parents=[common], **kw)
        p.set_defaults(func=func, cmd=f"lun {name}", _parser=p)
        return p

    p = cmd("create", create, help="create a LUN", description="Create a LUN (thin unless --thick).")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--size", required=True, type=size_arg, metavar="SIZE", help=SIZE_HELP)
    p.add_argument("--raid", type=int, choices=(0, 1, 5), default=5, help="RAID level (default 5)")
    p.add_argument("--thick", action="store_true", help="allocate all of its space now")

    p = cmd("list", list_, help="list LUNs (filters, columns)",
            description="List every LUN, snapshot and snapclone, or those the filters select "
                        "(all given filters must match). Space figures: see 'vsanctl du --help'. "
                        "--json prints every field of the selected LDs whatever -o says.")
    p.add_argument("--snapshots-of", metavar="NAME",
                   help="only the snapshots and snapclones whose origin is NAME (made of it; "
                        "also after NAME was deleted)")
    p.add_argument("--chain", metavar="NAME",
                   help="only NAME's sharing chain (the LDs that share data with it), oldest first")
    p.add_argument("--kind", choices=KINDS, help="only LDs of this kind")
    p.add_argument("-o", "--output", type=columns_arg, metavar="COL,COL", default=DEFAULT_COLUMNS,
                   help=f"columns to show, from: {', '.join(COLUMNS)} "
                        f"(default: {','.join(DEFAULT_COLUMNS)})")
    p.add_argument("--bytes", action="store_true", help="exact byte counts instead of KiB/MiB/GiB")

    p = cmd("show", show, help="show one LUN", description="Show one LUN in detail.")
    p.add_argument("name", metavar="NAME")

    p = cmd("resize", resize, help="grow or shrink a LUN",
            description="Set a LUN's size: SIZE, or +SIZE / -SIZE relative to the current one. "
                        "Shrinking discards the data past the new end, so it needs "
                        "--allow-shrink, and is refused while clients are connected (NBD "
                        "cannot tell them; they would write past the end). Connected clients "
                        "see a larger size when they reconnect.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("size", metavar="SIZE", type=resize_arg, help=SIZE_HELP + "; +SIZE or -SIZE: relative")
    p.add_argument("--allow-shrink", action="store_true", help="allow a size below the current one")

    p = cmd("delete", delete, help="delete a LUN and its data",
            description="Delete a LUN and free its space. Refused, with the reason, when "
                        "clients are connected, when snapshots or snapclones name it as their "
                        "origin or when it is read-only, unless --force; never for a protected "
                        "LUN or the source of a snapclone still being copied.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)

    p = cmd("rename", rename, help="rename a LUN",
            description="Rename a LUN (or any logical disk). Connected clients go on; new "
                        "connections use the new export name. Snapshots and tasks follow.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("new_name", metavar="NEW")

    p = cmd("revert", revert, help="make a LUN read like one of its snapshots",
            description="Revert LUN NAME to SNAPSHOT, any snapshot in its chain, at once: no data "
                        "is copied, and every snapshot, newer ones included, stays as it is. "
                        "The export keeps its name. Its state before the revert is freed, or "
                        "kept as a new snapshot with --keep. Refused while clients are "
                        "connected unless --force, which drops them.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--to", required=True, metavar="SNAPSHOT", help="the snapshot to revert to")
    p.add_argument("--keep", metavar="NEWNAME",
                   help="keep the state before the revert as a snapshot named NEWNAME")
    p.add_argument("--force", action="store_true", help="drop connected clients")

    p = cmd("set", set_, help="change a LUN's attributes",
            description="Change a LUN's attributes. " + ACCESS_HELP)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--read-only", type=on_off, metavar="on|off", help="refuse writes from NBD clients")
    p.add_argument("--protect", type=on_off, metavar="on|off",
                   help="refuse to delete it, even with --force (works on snapshots too)")
    p.add_argument("--allow-cert", type=name_list, metavar="CN[,CN...]",
                   help="serve it over TCP only to clients whose verified TLS certificate carries "
                        "one of these names (subject CN or SAN; needs tls_verify_peer on); "
                        "others are refused it and do not see it listed. '' clears the rule")
    p.add_argument("--readonly-for", action="append", metavar="ADDR[/PREFIX]|cert:NAME",
                   help="clients from this address or network, or with this certificate name, "
                        "see it read-only (repeatable; the entries given replace the list; "
                        "'' clears it)")


# ---- commands ---------------------------------------------------------------------------
def create(ctx, a) -> int:
    info = ctx.call("lun.create", name=a.name, size=a.size, raid=a.raid, thick=a.thick or None)
    return ctx.emit(info, lambda i: f"created LUN {i['name']}\n{render_one(i)}")


def list_(ctx, a) -> int:
    luns = ctx.call("lun.list", snapshots_of=a.snapshots_of, chain=a.chain, kind=a.kind)
    return ctx.emit(luns, lambda rows: render_list(rows, a.output, a.bytes,
                                                   filtered=bool(a.snapshots_of or a.chain or a.kind)))


def show(ctx, a) -> int:
    return ctx.emit(ctx.call("lun.show", name=a.name), render_one)


def resize_arg(text: str) -> tuple[int, int]:
    """(sign, bytes): sign 0 for an absolute SIZE, +1 / -1 for +SIZE / -SIZE."""
    sign = {"+": 1, "-": -1}.get(text[:1], 0)
    return sign, size_arg(text[1:] if sign else text)


def resize(ctx, a) -> int:
    sign, n = a.size
    kw = {"size": n} if not sign else {"delta": sign * n}
    info = ctx.call("lun.resize", name=a.name, allow_shrink=a.allow_shrink, **kw)
    return ctx.emit(info, lambda i: f"resized LUN {i['name']} to {size(i['size'])}\n{render_one(i)}")


def delete(ctx, a) -> int:
    res = ctx.call("lun.delete", name=a.name, force=a.force or None)
    return ctx.emit(res, lambda r: deleted("LUN", r))


def deleted(what: str, r: dict) -> str:
    """The delete's line, and what a --force dropped."""
    lines = [f"deleted {what} {r['deleted']}"]
    if r.get("disconnected"):
        lines.append(f"disconnected {r['disconnected']} NBD client(s)")
    if r.get("orphaned"):
        lines.append(f"kept with their data, their origin gone: {', '.join(r['orphaned'])}")
    return "\n".join(lines)


def rename(ctx, a) -> int:
    info = ctx.call("lun.rename", name=a.name, new_name=a.new_name)
    return ctx.emit(info, lambda i: f"renamed {a.name} to {i['name']}\n{render_one(i)}")


def revert(ctx, a) -> int:
    info = ctx.call("lun.revert", name=a.name, to=a.to, keep=a.keep, force=a.force or None)

    def render(i):
        before = f"kept as snapshot {i['kept_as']}" if i.get("kept_as") else "freed"
        dropped = f"; {i['dropped_clients']} client(s) dropped" if i.get("dropped_clients") else ""
        return f"reverted LUN {i['name']} to {a.to} (its state before: {before}{dropped})\n{render_one(i)}"
    return ctx.emit(info, render)


def name_list(text: str) -> list[str]:
    """CN[,CN...]; '' is the empty list (the daemon checks each name)."""
    return [n.strip() for n in text.split(",")] if text.strip() else []


def set_(ctx, a) -> int:
    if a.read_only is None and a.protect is None and a.allow_cert is None and a.readonly_for is None:
        usage_error(a, "nothing to set (use --read-only on|off, --protect on|off, --allow-cert, "
                       "--readonly-for)")
    ro_for = None if a.readonly_for is None else [e.strip() for e in a.readonly_for if e.strip()]
    info = ctx.call("lun.set", name=a.name, read_only=a.read_only, protect=a.protect,
                    allow_cert=a.allow_cert, readonly_for=ro_for)
    return ctx.emit(info, lambda i: f"LUN {i['name']} is {mode(i)}"
                    f"{', protected' if i.get('protected') else ''}\n{render_one(i)}")


# ---- rendering --------------------------------------------------------------------------
def mode(info: dict) -> str:
    return "read-only" if info.get("read_only") else "read-write"


def access(i: dict) -> str:
    """The access rules in one word-like cell: certs=A,B;ro=NET,cert:C, or -."""
    parts = [f"certs={','.join(i['allow_cert'])}" if i.get("allow_cert") else "",
             f"ro={','.join(i['readonly_for'])}" if i.get("readonly_for") else ""]
    return ";".join(p for p in parts if p) or "-"


def allocated(info: dict) -> str:
    alloc, total = info.get("allocated"), info.get("size")
    if not isinstance(alloc, int):
        return "-"
    pct = f" ({100 * alloc / total:.0f}%)" if isinstance(total, int) and total else ""
    return size(alloc) + pct


def kind(i: dict) -> str:
    if i.get("origin_deleted"):
        what = "snapclone" if i.get("clone") else "snapshot"
        return f"{what} of {i['origin_deleted']} (deleted)"
    if i.get("snapshot_of"):
        return "snapshot of " + i["snapshot_of"]
    if i.get("snapclone_of"):
        return f"snapclone of {i['snapclone_of']}" + (" (copying)" if i.get("clone") == "copying" else "")
    return "lun"


def state(i: dict) -> str:
    """ok, copying (a snapclone), INVALID, or read-only (pool): capitals want attention."""
    s = str(i.get("state", "ok"))
    return s.upper() if s == "invalid" else s


# column -> (header, cell(info, exact bytes?), right-aligned)
COLUMNS = {
    "name": ("NAME", lambda i, b: i.get("name"), False),
    "id": ("ID", lambda i, b: i.get("id", "-"), True),
    "kind": ("KIND", lambda i, b: kind(i), False),
    "origin": ("ORIGIN", lambda i, b: i.get("origin") or "-", False),
    "size": ("SIZE", lambda i, b: amount(i.get("size"), b), True),
    "provisioned": ("PROVISIONED", lambda i, b: amount(i.get("provisioned"), b), True),
    "allocated": ("ALLOCATED", lambda i, b: amount(i.get("allocated"), True) if b else allocated(i), True),
    "referenced": ("REFERENCED", lambda i, b: amount(i.get("referenced"), b), True),
    "exclusive": ("EXCLUSIVE", lambda i, b: amount(i.get("exclusive"), b), True),
    "shared": ("SHARED", lambda i, b: amount(i.get("shared"), b), True),
    "raid": ("RAID", lambda i, b: f"RAID{i.get('raid')}", False),
    "mode": ("MODE", lambda i, b: ("ro" if i.get("read_only") else "rw")
             + (",protected" if i.get("protected") else ""), False),
    "access": ("ACCESS", lambda i, b: access(i), False),
    "ldad": ("LDAD", lambda i, b: i.get("ldad", "-"), False),
    "state": ("STATE", lambda i, b: state(i), False),
}


def columns_arg(text: str) -> tuple[str, ...]:
    cols = tuple(c.strip().lower() for c in text.split(","))
    bad = [c for c in cols if c not in COLUMNS]
    if bad or not text.strip():
        raise argparse.ArgumentTypeError(
            f"unknown column{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad)) or repr(text)} "
            f"(valid: {','.join(COLUMNS)})")
    return cols


def render_list(luns: list, columns=DEFAULT_COLUMNS, exact: bool = False, filtered: bool = False) -> str:
    if not luns:
        return "no LUNs match" if filtered else "no LUNs"
    rows = [[COLUMNS[c][1](i, exact) for c in columns] for i in luns]
    return table([COLUMNS[c][0] for c in columns], rows,
                 right=[n for n, c in enumerate(columns) if COLUMNS[c][2]])


def render_one(i: dict) -> str:
    rows = [("name", i.get("name")), ("id", i.get("id", "-")),
            ("size", f"{size(i.get('size'))} ({i.get('size')} bytes)"),
            ("allocated", allocated(i))]
    rows += [(f, f"{size(i[f])} ({i[f]} bytes)") for f in FIGURES[2:] if f in i]
    rows += [("kind", kind(i)), ("raid", f"RAID{i.get('raid')}"),
             ("ldad", i.get("ldad", "-")), ("read-only", yes_no(i.get("read_only"))),
             ("protected", yes_no(i.get("protected")))]
    # access rules (README "Access control"), shown when set
    rows += [(label, ", ".join(i[k])) for k, label in (("allow_cert", "allowed certs"),
                                                        ("readonly_for", "read-only for")) if i.get(k)]
    rows += [("state", i.get("state", "ok"))]
    if "connections" in i:
        rows.append(("connections", i["connections"]))
    rows += [(k.replace("_", "-"), v) for k, v in sorted(i.items()) if k not in KNOWN]
    return kv(rows)
