"""The overcommit warning (config ``overcommit_warn``, issue 13).

Thin LUNs let the sizes handed out exceed the drives; that is the point of them,
and the risk: once the pool fills, writes fail with ENOSPC. Like LVM's warning
for thin pools, an operation that leaves an LDAD provisioned beyond ``ratio`` x
its capacity succeeds and says so. Provisioned is what may come to need its
own space: every LUN and snapclone at its full size, and snapshots with a
reservation. On-demand snapshots are left out by design: when they find no space
they are invalidated, and a LUN's write never fails for them (DESIGN.md §7).
Both sides are drive space, so RAID redundancy counts (a RAID1 GiB is two).
"""

from __future__ import annotations

from ..disk.role import Role
from ..units import format_size

ON_DEMAND = (Role.SNAPSHOT, Role.INVALID)


def check(pool, ldad: str, ratio: float) -> str | None:
    """The warning for LDAD ``ldad`` as it is now, or None (``ratio`` 0: off)."""
    if not ratio:
        return None
    lds = [ld for ld in pool.lds.values() if ld.ldad == ldad and ld.role not in ON_DEMAND]
    need = sum(pool.space.drive_bytes(ld.raid, ld.size) for ld in lds)
    capacity = pool.space.capacity(ldad)
    if need <= ratio * capacity:
        return None
    return (f"LDAD {ldad!r} is overcommitted: its LUNs, clones and reserved snapshots "
            f"({format_size(sum(ld.size for ld in lds))}) need {format_size(need)} of drive space "
            f"when full, more than {ratio:g} x its capacity of {format_size(capacity)}; writes fail "
            f"with ENOSPC once it fills ({format_size(pool.allocator.free_psegs(ldad) * pool.units.pseg)} "
            f"free now; the ratio is the daemon's overcommit_warn setting)")
