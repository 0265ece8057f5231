"""Rebuilding the in-memory pool from a checkpoint plus the metadata log.

Everything here works in bulk on arrays, so the cost follows the amount of
metadata (and the log's length), never the pool's raw capacity.
"""

from __future__ import annotations

import numpy as np

from ..mapping.lmap import ALLOCATED, STATE_MASK
from . import sharing, snapclone


def checkpoint_body(pool, seq: int) -> dict:
    lds = []
    for ld in pool.lds_by_id.values():
        lds.append({"id": ld.id, "name": ld.name, "size": ld.size, "raid": ld.raid,
                    "ldad": ld.ldad, "attrs": ld.attrs, "fill": ld.l2.fill,
                    "pred": ld.pred.id if ld.pred is not None else None,
                    "lmaps": {li: lm.tobytes() for li, lm in ld.l2.items()
                              # an all-zero LMAP differs from a non-zero fill
                              if lm.any() or ld.l2.fill}})
    tables = []
    for (raid, ldad), t in pool.space.tables.items():
        count, rows = t.dump()
        tables.append({"raid": raid, "ldad": ldad, "count": count, "rows": rows})
    return {"seq": seq, "lds": lds, "rsd": tables, "next_ld": pool.next_ld_id,
            "dirty": sorted([r, l, i] for (r, l), i in pool.dirty),
            "failed": sorted(i for i, d in pool.drives.items() if d.failed),
            "tasks": list(pool.tasks.values()), "settings": pool.settings}


def load_checkpoint(pool, body: dict) -> None:
    for t in body["rsd"]:
        pool.space.table(t["raid"], t["ldad"]).load(t["count"], t["rows"])
    for d in body["lds"]:
        ld = pool._new_ld(d["id"], d["name"], d["size"], d["raid"], d["ldad"], d["attrs"])
        ld.l2.fill = d.get("fill", 0)
        for li, data in d["lmaps"].items():
            ld.l2.install(int(li), np.frombuffer(data, dtype=np.uint32).copy())
    for d in body["lds"]:
        if d.get("pred") is not None:
            ld, p = pool.lds_by_id[d["id"]], pool.lds_by_id[d["pred"]]
            ld.pred, p.succ = p, ld
    pool.next_ld_id = body["next_ld"]
    pool.dirty = {((r, l), i) for r, l, i in body["dirty"]}
    for i in body["failed"]:
        if i in pool.drives:
            pool.drives[i].failed = True
    pool.tasks = {t["id"]: t for t in body.get("tasks", ())}
    pool.settings = dict(body.get("settings", {}))


def apply(pool, rec: dict) -> None:
    """Replays one log record (see Pool for what writes each kind)."""
    t = rec["t"]
    if t == "ldc":
        pool._new_ld(rec["id"], rec["name"], rec["size"], rec["raid"], rec["ldad"], rec.get("attrs"))
        pool.next_ld_id = max(pool.next_ld_id, rec["id"] + 1)
    elif t == "ldd":
        ld = pool.lds_by_id.pop(rec["id"])
        pool.lds.pop(ld.name, None)
        sharing.unlink(ld)          # deterministic: the same handover as when it ran
    elif t == "snap":
        pool._make_snapshot(pool.lds_by_id[rec["src"]], rec["id"], rec["name"], rec["reserve"],
                            rec.get("clone", False))
        pool.next_ld_id = max(pool.next_ld_id, rec["id"] + 1)
    elif t == "cdet":
        snapclone.detach(pool.lds_by_id[rec["id"]])
    elif t == "ldr":
        pool.lds_by_id[rec["id"]].l2.resize(rec["size"] // pool.units.segment)
        pool.lds_by_id[rec["id"]].size = rec["size"]
    elif t == "lda":
        ld = pool.lds_by_id[rec["id"]]
        ld.attrs.update(rec["attrs"])
        ld.invalid = bool(ld.attrs.get("invalid"))
        if "name" in rec:
            pool.lds.pop(ld.name, None)
            ld.name = rec["name"]
            pool.lds[ld.name] = ld
    elif t == "rsa":
        pool.space.table(rec["raid"], rec["ldad"]).add(rec["m"], rec["i"])
    elif t == "rsr":
        table = pool.space.table(rec["raid"], rec["ldad"])
        if "is" in rec:                 # many RStores at once (a bulk free)
            for i in np.frombuffer(rec["is"], np.uint32).tolist():
                table.remove(i)
        else:
            table.remove(rec["i"])
    elif t == "map":
        l2 = pool.lds_by_id[rec["ld"]].l2
        for k, e in zip(np.frombuffer(rec["k"], np.uint32).tolist(),
                        np.frombuffer(rec["e"], np.uint32).tolist()):
            l2.set(k, e)
    elif t == "lmap":
        l2 = pool.lds_by_id[rec["ld"]].l2
        if rec["li"] < len(l2.lmaps):
            if rec["e"]:
                l2.install(rec["li"], np.frombuffer(rec["e"], np.uint32).copy())
            elif l2.lmaps[rec["li"]] is not None:
                l2.lmaps[rec["li"]][:] = l2.fill   # absent at commit: it read as the fill
    elif t == "r5d":
        pool.dirty.add(((rec["raid"], rec["ldad"]), rec["i"]))
    elif t == "r5c":
        pool.dirty.clear()
    elif t == "task":
        if "drop" in rec:
            pool.tasks.pop(rec["drop"], None)
        else:
            pool.tasks[rec["task"]["id"]] = rec["task"]
    elif t == "set":
        pool.settings[rec["k"]] = rec["v"]
    elif t == "dfail":
        pool.drives[rec["d"]].failed = True
    else:
        raise ValueError(f"unknown log record type {t!r}")


def used_slots(pool) -> dict[tuple[int, str], np.ndarray]:
    """Per RSD table: a bitmask of referenced slots for every RSD index."""
    masks = {key: np.zeros(t.count, dtype=np.uint8) for key, t in pool.space.tables.items()}
    for ld in pool.lds_by_id.values():
        _, es = ld.l2.allocated()
        es = es[(es & STATE_MASK) == ALLOCATED]
        if len(es):
            m = masks[(ld.raid, ld.ldad)]
            idx = (es >> 3) & 0x1FFFFFF
            np.bitwise_or.at(m, idx.astype(np.int64), (1 << (es & 7)).astype(np.uint8))
    return masks


def derive_free(pool) -> None:
    """Free maps and free slots follow from the RSD tables and the maps."""
    for key, t in pool.space.tables.items():
        live = t.live_indices()
        # Free RSD indices follow from the table too: replayed "rsa" records revive
        # indices the checkpoint listed as free, "rsr" records free more.
        t.free_ids = np.setdiff1d(np.arange(t.count), live).tolist()
        if t.count:
            rows = np.concatenate(t.chunks)[: t.count][live]
            drives = (rows >> 24).astype(np.int64)
            psegs = (rows & 0xFFFFFF).astype(np.int64)
            if t.raid == 1:
                partner = np.vectorize(pool.allocator.partner, otypes=[np.int64])(drives) if drives.size else drives
                drives = np.concatenate([drives.ravel(), partner.ravel()])
                psegs = np.concatenate([psegs.ravel(), psegs.ravel()])
            for d in np.unique(drives).tolist():
                pool.allocator.mark_used(d, psegs.ravel()[drives.ravel() == d])
    for key, m in used_slots(pool).items():
        t = pool.space.tables[key]
        live = t.live_indices()
        free = (~m[live]) & 0xFF
        sel = free != 0
        t.free_slots = dict(zip(live[sel].tolist(), free[sel].tolist()))

