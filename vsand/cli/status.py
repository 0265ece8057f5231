"""`vsanctl status`: the daemon and its pool at a glance."""

from __future__ import annotations

from .ctl import kv, size


def register(sub, common) -> None:
    p = sub.add_parser("status", parents=[common], help="show the daemon and pool status",
                       description="Show the daemon and its pool: drives, capacity, LUNs, connections.")
    p.set_defaults(func=status, cmd="status", _parser=p)


def status(ctx, args) -> int:
    return ctx.emit(ctx.call("status"), render)


def render(st: dict) -> str:
    cap, free = st.get("capacity"), st.get("free")
    used = cap - free if isinstance(cap, int) and isinstance(free, int) else None
    pct = f" ({100 * used / cap:.1f}%)" if used is not None and cap else ""
    failed = st.get("failed_drives", 0)
    return kv([
        ("pool", st.get("pool", "-")),
        ("state", st.get("state", "ok")),
        ("daemon pid", st.get("pid", "-")),
        ("drives", f"{st.get('drives', 0)}" + (f" ({failed} FAILED)" if failed else " (all ok)")),
        ("capacity", size(cap)),
        ("used", size(used) + pct),
        ("free", size(free)),
        ("luns", st.get("luns", 0)),
        ("connections", st.get("connections", 0)),
        ("tasks", f"{st.get('tasks_running', 0)} running, {st.get('tasks_queued', 0)} queued"),
        ("nbd socket", st.get("nbd_socket") or "-"),
        ("nbd tcp", st.get("listen") or "-"),
    ])
