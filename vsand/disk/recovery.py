"""Rebuilding the in-memory pool from a checkpoint plus the metadata log.

Everything here works in bulk on arrays, so the cost follows the amount of
metadata (and the log's length), never the pool's raw capacity. Replay applies
whole commits only (meta/format.py), each record through ops.REPLAY, the same
functions that made the changes at run time.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import Corrupt, VsanError
from ..meta.stream import Bin
from ..mapping.lmap import SLOTS, owned, rsds, slots
from .ld import LogicalDisk
from .ops import REPLAY, reservation
from .role import Role

log = logging.getLogger("vsand.pool")

DERIVE_ROWS = 1024   # RSD rows per step of derive_free: temporaries of ~100 KiB


def checkpoint_body(pool, seq: int) -> dict:
    lds = []
    for ld in pool.catalog.by_id.values():
        lds.append({"id": ld.id, "name": ld.name, "size": ld.size, "raid": ld.raid,
                    "ldad": ld.ldad, "role": ld.role.value, "attrs": ld.attrs, "fill": ld.l2.fill,
                    "pred": ld.pred.id if ld.pred is not None else None,
                    # views of the live arrays, written as they are (fmt.CheckpointBlob)
                    "lmaps": {li: memoryview(lm) for li, lm in ld.l2.items()
                              # an all-zero LMAP differs from a non-zero fill
                              if lm.any() or ld.l2.fill}})
    tables = []
    for (raid, ldad), t in pool.space.tables.items():
        count, rows = t.dump()
        tables.append({"raid": raid, "ldad": ldad, "count": count, "rows": Bin(rows)})
    # No write intents: a checkpoint follows a sync of every data drive with no
    # write in flight, so every stripe is whole.
    return {"seq": seq, "lds": lds, "rsd": tables, "next_ld": pool.catalog.next_id,
            "failed": dict(pool.failed_drives), "tasks": list(pool.tasks.values()),
            "settings": pool.settings}


def load_checkpoint(pool, body: dict) -> None:
    for t in body["rsd"]:
        pool.space.table(t["raid"], t["ldad"]).load(t["count"], t["rows"])
    for d in body["lds"]:
        ld = LogicalDisk(pool, d["id"], d["name"], d["size"], d["raid"], d["ldad"],
                         Role(d["role"]), d["attrs"])
        pool.catalog.add(ld)
        ld.l2.fill = d.get("fill", 0)
        lmaps = d["lmaps"]
        for li in list(lmaps):
            # Copied, each LMAP's bytes dropped as soon as its array exists: an array
            # that owns its memory costs less per LMAP than one over the bytes.
            ld.l2.install(int(li), np.frombuffer(lmaps.pop(li), dtype=np.uint32).copy())
    for d in body["lds"]:
        if d.get("pred") is not None:
            ld, p = pool.catalog.by_id[d["id"]], pool.catalog.by_id[d["pred"]]
            if p.succ is not None or p is ld:
                raise Corrupt(f"checkpoint: LD {ld.name} cannot follow {p.name} in a sharing chain")
            ld.pred, p.succ = p, ld
    for ld in pool.catalog.by_id.values():      # every chain ends: no cycle
        x, n = ld, 0
        while x.pred is not None:
            x, n = x.pred, n + 1
            if n > len(pool.catalog):
                raise Corrupt(f"checkpoint: the sharing chain of LD {ld.name} is a cycle")
    pool.catalog.next_id = max(pool.catalog.next_id, body["next_ld"])
    for i, why in body["failed"].items():
        if int(i) in pool.drives:
            pool.mark_failed(int(i), why)
    pool.tasks = {t["id"]: t for t in body.get("tasks", ())}
    pool.settings = dict(body.get("settings", {}))


def replay(pool, commits: list[list[dict]], first_seq: int) -> int:
    """Applies every record of the whole commits found in the log; returns how many."""
    n = 0
    for i, records in enumerate(commits):
        for rec in records:
            try:
                REPLAY[rec["t"]](pool, rec, False)
            except VsanError:
                raise
            except Exception as e:      # a record this state cannot take: say which
                what = rec.get("t") if isinstance(rec, dict) else type(rec).__name__
                raise Corrupt(f"metadata log commit {first_seq + i}, record {what!r}: cannot be "
                              f"applied ({type(e).__name__}: {e})") from None
            n += 1
    return n


def drop_unfinished(pool) -> list[str]:
    """LDs whose creation did not finish before the crash (a thick create's
    allocation): nobody was told they exist, so they go, as if never created."""
    gone = []
    for ld in list(pool.catalog.by_id.values()):
        if ld.attrs.get("creating"):
            log.warning("removing %s: its creation did not finish before the last stop", ld.name)
            REPLAY["ldd"](pool, {"t": "ldd", "id": ld.id}, False)
            gone.append(ld.name)
    return gone


def restore_reservations(pool) -> None:
    pool.space.reserve = {}
    for ld in pool.catalog.by_id.values():
        if ld.role.reserved:
            pool.space.promise(ld, reservation(ld))


def used_slots(pool) -> dict[tuple[int, str], np.ndarray]:
    """Per RSD table: a bitmask of referenced slots for every RSD index. One LMAP at
    a time: the temporaries stay a few KiB whatever the size of the maps."""
    masks = {key: np.zeros(t.count, dtype=np.uint8) for key, t in pool.space.tables.items()}
    for ld in pool.catalog.by_id.values():
        m = masks.get((ld.raid, ld.ldad))
        for _, lm in ld.l2.items():
            es = lm[owned(lm)]
            if len(es):
                np.bitwise_or.at(m, rsds(es), (1 << slots(es)).astype(np.uint8))
    return masks


def derive_free(pool) -> None:
    """Free maps and free slots follow from the RSD tables and the maps, one table
    chunk at a time (bounded temporaries, as in used_slots)."""
    full = (1 << SLOTS) - 1
    for key, used in used_slots(pool).items():
        t = pool.space.tables[key]
        dead, free_slots = [], {}
        for base, rows, alive in t.blocks(DERIVE_ROWS):
            drives, psegs = pool.space.physical_arrays(t.raid, rows[alive])
            for d in np.unique(drives).tolist():
                pool.allocator.mark_used(d, psegs[drives == d])
            # Free RSD indices follow from the table too: replayed "rsa" records
            # revive indices the checkpoint listed as free, "rsr" records free more.
            dead.append(np.flatnonzero(~alive) + base)
            live = np.flatnonzero(alive) + base
            free = (~used[live]) & full
            sel = free != 0
            free_slots.update(zip(live[sel].tolist(), free[sel].tolist()))
        t.free_ids = np.concatenate(dead).tolist() if dead else []
        t.set_free(free_slots)
