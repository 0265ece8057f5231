"""Control operations (schema.py): one method per op, run on the event loop.

Each handler validates what the pool does not, calls one pool operation and
returns plain data. A request runs between two NBD requests (the loop runs one
thing at a time), which is the quiesce a snapshot needs.
"""

from __future__ import annotations

import logging
import os

from ..access import rule as access_rule
from ..disk import snapclone, usage
from ..disk.diff import diff_extents
from ..disk.role import Role
from ..errors import InvalidArgument
from ..disk.level import TOLERANCE as LEVEL_TOLERANCE
from ..tasks import BGCOPY, LEVEL, REBUILD, SCRUB
from ..tasks.rebuild import TARGET as POOL
from ..tasks.runner import check_rate
from ..units import format_size
from . import deletion, overcommit
from .schema import KINDS, MAX_REPLY, POOL_SETTINGS, Warned

SNAPSHOT_ROLES = (Role.SNAPSHOT, Role.RESERVED_SNAPSHOT, Role.INVALID)   # invalid: a snapshot that ran out of space

log = logging.getLogger("vsand.control")

# [offset, length] pairs take at most 19 bytes of msgpack each: this many fit a frame
MAX_DIFF_EXTENTS = (MAX_REPLY - (1 << 20)) // 19

# pool.set keys (schema.POOL_SETTINGS) -> (the pool's record key, effective value)
POOL_KEYS = {"snapclone_mode": (snapclone.SETTING, lambda pool: snapclone.mode(pool.settings))}


class Handlers:
    def __init__(self, pool, nbd, tasks, cfg, rebuild=lambda: None):
        """``nbd``: the NBD server (connections, disconnect); ``tasks``: the task runner;
        ``rebuild``: starts a rebuild when there is something to rebuild and none runs."""
        self.pool = pool
        self.nbd = nbd
        self.tasks = tasks
        self.cfg = cfg
        self.rebuild = rebuild

    def status(self):
        st = self.pool.status()
        return {"pool": st["pool"], "state": st["state"], "drives": len(st["drives"]),
                "failed_drives": sum(d["failed"] for d in st["drives"]),
                "capacity": sum(d["psegs"] for d in st["drives"]) * self.pool.units.pseg,
                "free": st["free_bytes"], "luns": len(st["lds"]),
                "connections": len(self.nbd.connections),
                "memory_budget": self.nbd.budget.total, "memory_budget_used": self.nbd.budget.used,
                "tasks_running": sum(t.state == "running" for t in self.tasks.tasks.values()),
                "tasks_queued": sum(t.state == "queued" for t in self.tasks.tasks.values()),
                "nbd_socket": self.cfg.nbd_socket, "listen": self.cfg.listen,
                "pid": os.getpid()}

    def lun_create(self, name, size, raid=5, thick=False, ldad="default"):
        ld = self.pool.create_ld(name, size, raid=raid, ldad=ldad, thick=thick)
        return self._warn_overcommit(ld.info())

    def _warn_overcommit(self, info):
        """``info`` (of the LD an operation just provisioned), with the overcommit
        warning when its LDAD is now provisioned beyond the configured ratio."""
        why = overcommit.check(self.pool, info["ldad"], self.cfg.overcommit_warn)
        if why is None:
            return info
        log.warning("%s", why)
        return Warned(info, [why])

    def lun_list(self, snapshots_of=None, chain=None, kind=None):
        """Every LD by name, or those the filters select (all of them must match):
        ``snapshots_of`` the snapshots and snapclones whose origin is NAME (also
        after NAME was deleted), ``chain`` NAME's sharing chain in its order
        (oldest first until a revert), ``kind`` one of schema.KINDS. Each with its space figures
        (disk/usage.py)."""
        if kind is not None and kind not in KINDS:
            raise InvalidArgument(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
        lds = self.pool.chain(chain) if chain is not None else \
            sorted(self.pool.lds.values(), key=lambda x: x.name)
        infos = [ld.info() for ld in lds]
        if snapshots_of is not None:
            # a deleted origin's name is kept in origin_deleted: matched only while no
            # new LD has that name, so a new "m1" does not adopt the old m1's snapshots
            key = "origin" if snapshots_of in self.pool.lds else "origin_deleted"
            infos = [i for i in infos if i.get(key) == snapshots_of]
            if not infos and snapshots_of not in self.pool.lds:
                self.pool.get(snapshots_of)         # NotFound: most likely a typo
        if kind is not None:
            infos = [i for i in infos if i["kind"] == kind]
        figures = usage.usage_by_name([self.pool.get(i["name"]) for i in infos])
        return [{**i, **figures[i["name"]]} for i in infos]

    def lun_show(self, name):
        ld = self.pool.get(name)
        info = {**ld.info(), **usage.usage_by_name([ld])[name]}
        info["connections"] = self.nbd.count(name)
        return info

    def du(self, name=None):
        """``rbd du``: the space figures of every LD (or of NAME's sharing chain),
        chain by chain (in chain order: oldest first until a revert), each chain's totals, and the pool's."""
        lds = [self.pool.get(name)] if name is not None else \
            sorted(self.pool.lds.values(), key=lambda x: x.name)
        chains = []
        for c in usage.chains(lds):
            rows = usage.chain_usage(c)
            # named after its LUN or clone, which a revert may have moved into the middle
            label = next((ld.name for ld in c if not ld.role.snapshot and not ld.invalid), c[-1].name)
            chains.append({"name": label, "lds": rows, "provisioned": sum(r["provisioned"] for r in rows),
                           "allocated": sum(r["allocated"] for r in rows)})
        return {"chains": chains, "pool": usage.pool_usage(self.pool)}

    def lun_resize(self, name, size=None, delta=None, allow_shrink=False):
        """To ``size``, or by ``delta`` bytes. Shrinking needs ``allow_shrink`` and no
        connected client: NBD fixes an export's size at the handshake and has no
        way to tell a client it changed, so a client would go on writing past the
        new end. Growing is allowed while connected: clients see the new size when
        they reconnect (qemu-img, nbd-client and nbdfuse all read it then)."""
        if (size is None) == (delta is None):
            raise InvalidArgument("give the new size or a change (+SIZE / -SIZE), not both or neither")
        now = self.pool.get(name).size
        new = size if size is not None else now + delta
        if new <= 0:
            raise InvalidArgument(f"{name} is {format_size(now)}: it cannot shrink by {format_size(-delta)}")
        self.pool.catalog.check_size(new)        # a bad size says so before anything else
        if new < now:
            if not allow_shrink:
                raise InvalidArgument(f"{name} is {format_size(now)}: {format_size(new)} would discard "
                                      f"the last {format_size(now - new)} (add --allow-shrink)")
            n = self.nbd.count(name)
            if n:
                raise InvalidArgument(f"{name} has {n} connected client(s), which NBD cannot tell "
                                      f"of a smaller size: disconnect them first")
        self.pool.resize_ld(name, new)
        if new < now:
            log.warning("LUN %s shrunk from %s to %s", name, format_size(now), format_size(new))
            return self.pool.get(name).info()
        return self._warn_overcommit(self.pool.get(name).info())

    def lun_delete(self, name, force=False):
        """Deletes any LD, with guards (deletion.py): a protected one or the source of
        a copy in progress never; one with connected clients, dependents or the
        read-only mark only with ``force``, which says what it dropped."""
        ld = self.pool.get(name)
        dependents = self.pool.dependents(name)
        clients = self.nbd.count(name)
        deletion.check(ld, dependents, clients, force)
        self.pool.tx.writable()     # a pool that cannot commit refuses now, before anyone is dropped
        self.tasks.cancel_target(name, f"{name} was deleted")
        self.nbd.disconnect(name, f"LUN {name} deleted")   # nobody keeps writing into a deleted LUN
        self.pool.delete_ld(name)
        self.nbd.forget(name)       # its metrics end; a new LUN of that name starts at 0
        out = {"deleted": name, "disconnected": clients, "orphaned": [d.name for d in dependents]}
        if clients or dependents or ld.read_only:
            log.warning("%s deleted with --force: %s", name, deletion.dropped(out))
        return out

    def lun_revert(self, name, to, keep=None, force=False):
        """``name`` reads like snapshot ``to`` from now on (disk/revert.py), under the
        same export name. Connected clients would see their disk change under them
        (a filesystem's cache then lies), so they are refused unless ``force``,
        which drops them after the revert is durable."""
        n = self.nbd.count(name)
        if n and not force:
            raise InvalidArgument(f"{name} has {n} connected client(s) that would see the disk "
                                  f"change under them: disconnect them, or add --force to drop them")
        if self.pool.get(name).read_only and not force:
            raise InvalidArgument(f"{name} is read-only: a revert changes its data; add --force "
                                  f"to revert it anyway")
        self.pool.revert(name, to, keep)
        if n:
            self.nbd.disconnect(name, f"LUN {name} reverted to {to} (--force)")
        log.warning("LUN %s reverted to %s%s%s", name, to,
                    f"; its state before is snapshot {keep}" if keep else "; its state before is freed",
                    f"; {n} client(s) dropped" if n else "")
        info = self.pool.get(name).info()
        info["reverted_to"] = to
        if keep:
            info["kept_as"] = keep
        info["dropped_clients"] = n
        return info

    def snapshot_create(self, source, name, reserve=False):
        info = self.pool.snapshot(source, name, reserve=reserve).info()
        return self._warn_overcommit(info) if reserve else info

    def snapshot_delete(self, name, force=False):
        """Deletes a snapshot and nothing else: a LUN or a clone named by mistake
        stays (issue 13: `snapshot delete demo` used to delete the LUN)."""
        self._snapshot_only(name, "delete")
        return self.lun_delete(name, force)

    def lun_rename(self, name, new_name):
        """Durable when this returns. Connected clients go on (they hold the LD, not
        its name); new connections use the new export name."""
        self.pool.rename_ld(name, new_name)
        self.tasks.retarget(name, new_name)
        self.nbd.rename(name, new_name)
        log.info("%s renamed to %s", name, new_name)
        info = self.pool.get(new_name).info()
        if self.cfg.default_export == name:
            why = (f"{name} was the default export (config default_export): clients asking for "
                   f"the empty export name get nothing until the config names {new_name}")
            log.warning("%s", why)
            return Warned(info, [why])
        return info

    def snapshot_rename(self, name, new_name):
        self._snapshot_only(name, "rename")
        return self.lun_rename(name, new_name)

    def _snapshot_only(self, name, verb):
        ld = self.pool.get(name)
        if ld.role not in SNAPSHOT_ROLES:
            what = "a LUN" if ld.role is Role.LUN else f"a {ld.role.value}"
            raise InvalidArgument(f"{name} is {what}, not a snapshot; `vsanctl lun {verb} "
                                  f"{name}` {verb}s it")

    def tree(self, name):
        out = []
        for ld in self.pool.chain(name):
            owned, shared = ld.share_counts()
            info = ld.info()
            out.append({"name": ld.name, "owned": owned, "shared": shared,
                        "allocated": owned * self.pool.units.segment,
                        "space": info.get("space", "lun"), "invalid": ld.invalid,
                        "state": info["state"]})
        return out

    def diff(self, name, since=None):
        """The extents of ``name`` that may differ from ``since`` (an LD of its
        chain), or its allocated extents: what an incremental (a full) backup copies."""
        newer = self.pool.get(name)
        older = self.pool.get(since) if since is not None else None
        ext = diff_extents(newer, older)
        if len(ext) > MAX_DIFF_EXTENTS:
            ctx = f"vsand:changed:{since}" if since else "base:allocation"
            raise InvalidArgument(f"{name} has {len(ext)} changed extents, more than a control reply "
                                  f"holds ({MAX_DIFF_EXTENTS}): read them over NBD (block status "
                                  f"context {ctx} of export {name})")
        return {"name": name, "since": since, "size": newer.size,
                "extents": [[o, n] for o, n in ext], "changed": sum(n for _, n in ext)}

    def lun_set(self, name, read_only=None, protect=None, allow_cert=None, readonly_for=None):
        attrs = {k: v for k, v in (("read_only", read_only), ("protected", protect)) if v is not None}
        rules = {k: v for k, v in (("allow_cert", allow_cert), ("readonly_for", readonly_for))
                 if v is not None}
        if not attrs and not rules:
            raise InvalidArgument("nothing to set (use --read-only on|off, --protect on|off, "
                                  "--allow-cert, --readonly-for)")
        self.pool.get(name)              # an unknown LD is the error, before a bad rule
        try:
            rules = {k: access_rule(k, v) for k, v in rules.items()}
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        attrs.update({k: v for k, v in rules.items() if v})
        self.pool.set_attrs(name, drop=[k for k, v in rules.items() if not v], **attrs)
        if rules:                        # connections keep the access they were given
            log.info("%s: access rules now %s (new connections)", name,
                     {k: v or "none" for k, v in rules.items()})
        info = self.pool.get(name).info()
        why = self._unguarded_kin(name, rules)
        if why:
            for w in why:
                log.warning("%s", w)
            return Warned(info, why)
        return info

    def _unguarded_kin(self, name, rules) -> list[str]:
        """Warnings for the LDs of ``name``'s sharing chain (its snapshots, its
        origin, snapclones being copied) and its snapclones whose copy is done that
        lack a rule just set on it: they hold some of the same data, and a rule
        guards one LD only."""
        out = []
        lds = {ld.name: ld for ld in self.pool.chain(name) + self.pool.dependents(name)}
        for key, value in rules.items():
            if not value:                # cleared: nothing is left less guarded than NAME
                continue
            kin = sorted(n for n, ld in lds.items()
                         if n != name and sorted(ld.attrs.get(key) or ()) != value)
            if kin:
                flag = "--" + key.replace("_", "-")
                out.append(f"{name} shares data with {', '.join(kin)} (its sharing chain), which "
                           f"do not have the same {key} rule: clients they admit read that data "
                           f"(set it on them too: vsanctl lun set NAME {flag} ...)")
        return out

    def drive_list(self):
        return self.pool.status()["drives"]

    def drive_fail(self, index):
        """An operator's verdict: the drive is failed, durably, when this returns;
        RAID1/5 RStores on it run degraded from then on."""
        if index in self.pool.failed_drives:
            raise InvalidArgument(f"drive {index} is failed already: {self.pool.failed_drives[index]}")
        self.pool.fail_drive(index, "failed by command")
        log.warning("drive %d (%s) failed by command; its RStores run degraded", index,
                    self.pool.drives[index].path)
        return next(d for d in self.pool.status()["drives"] if d["index"] == index)

    def drive_add(self, drive=None, size=None, ldad="default"):
        """A new drive (its path), its capacity usable at once; durable when this
        returns. With no path, the next image file under the state directory's drives/ (the
        daemon's own simulated drives), of the configured size unless given."""
        path = drive
        if path is None:
            if self.cfg.drive_paths:
                raise InvalidArgument("give the new drive's PATH: this daemon's drives are "
                                      "listed in its configuration, not kept in its state directory")
            index = max(self.pool.drive_recs) + 1
            path = os.path.join(self.cfg.state_dir, "drives", f"drive-{index:02d}.img")
            size = size or self.cfg.drive_size
        rec = self.pool.add_drive(path, size, ldad)
        log.warning("drive %d (%s, %s) added to LDAD %s", rec["i"], rec["path"],
                    format_size(rec["size"]), ldad)
        self.rebuild()           # a pool short of room for a rebuild may have it now
        return next(d for d in self.pool.status()["drives"] if d["index"] == rec["i"])

    def drive_replace(self, index, drive=None, size=None):
        """``drive add`` into the LDAD of drive ``index``, then ``drive remove index``:
        its data (rebuilt from redundancy if it failed) goes to the other drives of
        its RSS, the new one first, being the emptiest. A drive that cannot start
        leaving (unknown, leaving or removed already) is refused before anything is
        added; one whose data would have nowhere to go even with the new drive is
        refused after the add, which stays."""
        self.pool.check_removable(index)
        new = self.drive_add(drive, size, self.pool.drive_recs[index]["ldad"])
        old = self.drive_remove(index)
        return {"added": new, "removing": old}

    def drive_remove(self, index):
        """Starts emptying drive ``index`` (durable when this returns); the rebuild
        task moves its data, then the pool lets it go."""
        held = self.pool.remove_drive(index)
        log.warning("drive %d (%s) is being removed: %d PSEG(s) to move", index,
                    self.pool.drive_recs[index]["path"], held)
        self.rebuild()        # starts the moves, or lets the drive go if nothing is on it
        return next(d for d in self.pool.status()["drives"] if d["index"] == index)

    # ---- snapclones and background tasks ------------------------------------------------
    def snapclone_create(self, source, name, rate=None):
        check_rate(rate)          # refuse before anything is created
        info = self.pool.snapclone(source, name).info()
        info["task"] = self.tasks.start(BGCOPY, name, rate).id
        return self._warn_overcommit(info)

    def snapclone_copy(self, name, rate=None):
        """A new copy task for a snapclone still in its tree (e.g. after a cancel)."""
        if self.pool.clone_state(name).get("done"):
            raise InvalidArgument(f"{name} is not a dependent snapclone: nothing to copy")
        return self.tasks.start(BGCOPY, name, rate).info(self.tasks.clock())

    def task_list(self):
        return self.tasks.list_tasks()

    def task_show(self, id):
        return self.tasks.show(id)

    def task_cancel(self, id):
        self.tasks.cancel(id)
        return self.tasks.show(id)

    def task_set(self, id, rate):
        self.tasks.set_rate(id, rate)
        return self.tasks.show(id)

    def pool_get(self):
        settings = self.pool.settings
        return {"settings": {k: value(self.pool) for k, (_, value) in POOL_KEYS.items()},
                "defaults": sorted(k for k, (key, _) in POOL_KEYS.items() if key not in settings),
                "choices": {k: list(v) for k, v in POOL_SETTINGS.items()},
                "tasks": {"rate_mib": self.cfg.task_rate_mib,
                          "latency_guard": self.cfg.task_latency_guard}}

    def pool_rebuild(self):
        """Starts a rebuild by hand, e.g. after one ended for want of room and
        space was freed; one starts by itself when a drive fails."""
        dmg = self.pool.damage()
        if not dmg.todo:
            raise InvalidArgument("nothing to rebuild: no RStore has a member on a failed drive"
                                  + (f" that redundancy can restore ({dmg.lost} lost data)" if dmg.lost else ""))
        return self.tasks.start(REBUILD, POOL).info(self.tasks.clock())

    def pool_level(self):
        """Starts leveling by hand; it starts by itself after drives come and go."""
        if not self.pool.level_remaining():
            raise InvalidArgument(f"nothing to level: every RSS is within "
                                  f"{100 * LEVEL_TOLERANCE:.0f} points of used fraction (widest spread "
                                  f"{100 * self.pool.level_spread():.1f})")
        return self.tasks.start(LEVEL, POOL).info(self.tasks.clock())

    def pool_scrub(self):
        """Starts a scrub: every allocated RAID1/5 stripe read, checked, repaired."""
        return self.tasks.start(SCRUB, POOL).info(self.tasks.clock())

    def pool_set(self, key, value):
        if key not in POOL_SETTINGS:
            raise InvalidArgument(f"unknown pool setting {key!r} (known: {', '.join(sorted(POOL_SETTINGS))})")
        if value not in POOL_SETTINGS[key]:
            raise InvalidArgument(f"{key} must be one of {', '.join(POOL_SETTINGS[key])}, not {value!r}")
        self.pool.set_setting(POOL_KEYS[key][0], value)
        return self.pool_get()
