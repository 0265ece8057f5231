"""The LD catalog: logical disks by name and id, and what a new one may be called.

Only the operations in ops.py add, rename or remove entries (at run time and in
log replay alike); everything else looks LDs up here.
"""

from __future__ import annotations

from ..errors import Exists, InvalidArgument, NotFound
from ..units import Units, format_size

RAID_TYPES = (0, 1, 5)


# names no LD may take: the target of pool-wide tasks (tasks/rebuild.py TARGET), which a
# task kept by LD name would otherwise be taken for
RESERVED = frozenset({"pool"})


class Catalog:
    def __init__(self, units: Units):
        self.units = units
        self.by_name: dict = {}
        self.by_id: dict = {}
        self.next_id = 1

    def __len__(self) -> int:
        return len(self.by_id)

    def get(self, name: str):
        try:
            return self.by_name[name]
        except KeyError:
            raise NotFound(f"no logical disk named {name!r}") from None

    def add(self, ld) -> None:
        assert ld.id not in self.by_id and ld.name not in self.by_name, (ld.id, ld.name)
        self.by_name[ld.name] = ld
        self.by_id[ld.id] = ld
        self.next_id = max(self.next_id, ld.id + 1)

    def remove(self, ld) -> None:
        del self.by_name[ld.name]
        del self.by_id[ld.id]

    def rename(self, ld, name: str) -> None:
        del self.by_name[ld.name]
        ld.name = name
        self.by_name[name] = ld

    def total_segments(self) -> int:
        return sum(ld.l2.nsegs for ld in self.by_id.values())

    # ---- validation, once, before an operation is recorded ----------------------------
    def check_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or len(name) > 255 or "/" in name \
                or not name.isprintable():
            raise InvalidArgument(f"bad LD name {name!r} (1-255 printable characters, no '/')")
        if name in RESERVED:
            raise InvalidArgument(f"{name!r} is reserved: pool-wide tasks (rebuild, scrub, "
                                  f"leveling) are listed with it as their target")
        if name in self.by_name:
            raise Exists(f"logical disk {name!r} exists")

    def check_size(self, size: int) -> None:
        u = self.units
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise InvalidArgument(f"size must be a positive number of bytes, not {size!r}")
        if size % u.segment:
            up = -(-size // u.segment) * u.segment
            raise InvalidArgument(f"size {format_size(size)} ({size} bytes) is not a multiple of the LUN "
                                  f"granularity, {format_size(u.segment)} (the next is {format_size(up)})")
        if size > u.max_ld_size:
            raise InvalidArgument(f"size {format_size(size)} exceeds the per-LD limit of "
                                  f"{format_size(u.max_ld_size)}")

    @staticmethod
    def check_raid(raid) -> None:
        if raid not in RAID_TYPES or isinstance(raid, bool):
            raise InvalidArgument(f"RAID type must be one of 0, 1, 5, not {raid!r}")
