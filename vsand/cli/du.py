"""`vsanctl du [NAME]`: space used per LD, per sharing chain and in the pool, like
`rbd du` (the figures: vsand/disk/usage.py)."""

from __future__ import annotations

from .ctl import amount, table

FIGURES_HELP = (
    "PROVISIONED: the LD's size. ALLOCATED: the segments it holds data for itself; "
    "summed over a chain, what the chain really uses. REFERENCED: the data it reads, "
    "its own and what it shares with newer LDs of its chain. EXCLUSIVE: what deleting it "
    "would free (what only it reads). SHARED: REFERENCED - EXCLUSIVE, the data it reads that "
    "another LD reads too. Pool: capacity, used (capacity - free: data with RAID overhead, "
    "metadata, failed drives), free; data: the segments allocated to LDs, in RStores taking "
    "PHYSICAL bytes of drives with their RAID overhead; reserved: promised to reserved "
    "snapshots and copying snapclones; freeing: freed, reusable at the next commit.")
HEADERS = ["NAME", "PROVISIONED", "ALLOCATED", "REFERENCED", "EXCLUSIVE", "SHARED"]


def register(sub, common) -> None:
    p = sub.add_parser("du", parents=[common], help="space used per LD, chain and pool",
                       description="Show the space every LD (or NAME's sharing chain) uses, chain by "
                                   "chain (in chain order: oldest first until a revert), each chain's total and the pool's figures. "
                                   + FIGURES_HELP)
    p.add_argument("name", metavar="NAME", nargs="?", help="only the chain NAME belongs to")
    p.add_argument("--bytes", action="store_true", help="exact byte counts instead of KiB/MiB/GiB")
    p.set_defaults(func=du, cmd="du", _parser=p)


def du(ctx, a) -> int:
    return ctx.emit(ctx.call("du", name=a.name), lambda r: render(r, a.bytes))


def render(r: dict, exact: bool = False) -> str:
    def row(name, u, keys=HEADERS[1:]):
        return [name] + [amount(u[k.lower()], exact) if k in keys else "" for k in HEADERS[1:]]

    rows = []
    for c in r["chains"]:
        rows += [row(u["name"], u) for u in c["lds"]]
        if len(c["lds"]) > 1:        # named after its newest LD
            rows.append(row(f"<chain {c.get('name', c['lds'][-1]['name'])}>", c, ("PROVISIONED", "ALLOCATED")))
    if len(r["chains"]) > 1:
        total = {k: sum(c[k] for c in r["chains"]) for k in ("provisioned", "allocated")}
        rows.append(row("<TOTAL>", total, ("PROVISIONED", "ALLOCATED")))
    p = r["pool"]
    pool = (f"pool: capacity {amount(p['capacity'], exact)}, used {amount(p['used'], exact)}, "
            f"free {amount(p['free'], exact)}; data {amount(p['allocated'], exact)} allocated in "
            f"{amount(p['physical'], exact)} of RStores, {amount(p['reserved'], exact)} reserved, "
            f"{amount(p['freeing'], exact)} freeing")
    body = table(HEADERS, rows, right=range(1, len(HEADERS))) if rows else "no LUNs"
    return body + "\n" + pool

