"""Point-in-time copies of logical disks: snapshots (Fig. 9) and snapclones with
their BGCOPY (Figs. 13-15). A mixin of Pool: these methods use the pool's journal,
reservations and commits; the map work is in sharing.py and snapclone.py."""

from __future__ import annotations

from ..errors import InvalidArgument, NoSpace
from ..faults import crashpoint
from . import bgcopy, sharing, snapclone
from .ld import LogicalDisk


class PointInTimeCopies:
    def _reserve_left(self, ld) -> int:
        if snapclone.in_tree(ld):
            return snapclone.copy_need(ld)
        return max(0, ld.l2.nsegs - ld.allocated_segments())

    def snapshot(self, source: str, name: str, reserve: bool = False,
                 clone: bool = False) -> LogicalDisk:
        """A point-in-time copy of ``source`` (a LUN or a snapshot) that costs no data
        movement; durable when this returns (Fig. 9). ``clone``: a snapclone, which
        reserves what BGCOPY will copy (see snapclone.py)."""
        x = self.get(source)
        if x.invalid:
            raise InvalidArgument(f"{source} is invalid; it can only be deleted")
        self._check_name(name)
        nsegs = x.l2.nsegs
        if reserve or clone:
            want = snapclone.resolved_allocated(x) if clone else nsegs
            need = self.space.reserved_psegs(x.ldad, extra=(x.raid, want))
            if need > self.allocator.free_psegs(x.ldad):
                what = "the copy" if clone else "a full copy"
                raise NoSpace(f"not enough free space to reserve {what} of {source}")
        self._update_reserve(extra=nsegs)
        self.flush()          # quiesce: every earlier write to the source is committed
        crashpoint("snapshot.after_quiesce")
        p = self._make_snapshot(x, self.next_ld_id, name, reserve, clone)
        self.next_ld_id += 1
        self.journal.add({"t": "snap", "src": x.id, "id": p.id, "name": name, "reserve": reserve,
                          "clone": clone})
        crashpoint("snapshot.before_commit")
        self.flush()
        return p

    def _make_snapshot(self, x, ld_id: int, name: str, reserve: bool,
                       clone: bool = False) -> LogicalDisk:
        if clone:
            attrs = {"snapclone_of": x.name, "clone": "copying", "space": "reserve"}
        else:
            attrs = {"snapshot_of": x.name, "space": "reserve" if reserve else "on-demand"}
        p = self._new_ld(ld_id, name, x.size, x.raid, x.ldad, attrs)
        sharing.link_snapshot(x, p)
        if reserve or clone:
            p.reserve_left = self._reserve_left(p)    # segments still to come to it
            self.space.add_reserve(x.raid, x.ldad, p.reserve_left)
        return p

    def snapclone(self, source: str, name: str) -> LogicalDisk:
        """A snapclone of ``source``, usable at once; BGCOPY (bgcopy_step) makes it
        independent. Durable when this returns."""
        return self.snapshot(source, name, clone=True)

    def bgcopy_step(self, name: str, max_segments: int) -> dict:
        """One BGCOPY step, copying on the calling thread (see bgcopy.py)."""
        return bgcopy.step(self, self.get(name), max_segments)

    def bgcopy_plan(self, name: str, max_segments: int):
        """A BGCOPY step in three parts: the returned Plan's ``io()`` may run in a
        worker thread, then ``finish()`` on the loop gives bgcopy_step's result;
        a dict instead of a Plan is a whole step's result already."""
        return bgcopy.plan(self, self.get(name), max_segments)

    def clone_state(self, name: str) -> dict:
        return bgcopy.state(self, self.get(name))

    def leave_tree(self, c) -> None:
        """A snapclone that shares nothing leaves its tree (Fig. 14); durable on return."""
        self.flush()          # the "cdet" record replays against exactly this state
        self.space.add_reserve(c.raid, c.ldad, -getattr(c, "reserve_left", 0))
        c.reserve_left = 0
        snapclone.detach(c)
        self.journal.add({"t": "cdet", "id": c.id})
        crashpoint("bgcopy.before_detach_commit")
        self.flush()

    def chain(self, name: str) -> list[LogicalDisk]:
        """The sharing chain ``name`` belongs to, oldest first."""
        return sharing.chain_of(self.get(name))

