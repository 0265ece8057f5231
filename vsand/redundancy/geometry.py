"""Pure RAID geometry: (RAID type, slot, byte range of a segment) -> column pieces.

An RStore is 8 segments; segment ``slot`` is stripe ``slot`` of the RStore, i.e. one
full stripe of 4 data columns x stripe unit (256 KiB). Column c of a segment holds
segment bytes [c*su, (c+1)*su) and lives at byte slot*su of its PSEG, so every
PSEG of an RStore is one column of all 8 stripes.

Member order in an RSD:
- RAID0: members 0-3 are data columns 0-3.
- RAID5: 5 members; stripe ``slot`` keeps parity on member ``4 - slot % 5`` and data
  column c on member ``(parity + 1 + c) % 5`` (left-symmetric rotation).
- RAID1: members 2c and 2c+1 are the two copies of data column c.
"""

from __future__ import annotations

DATA_COLUMNS = 4
WIDTH = {0: 4, 1: 8, 5: 5}


def parity_member(slot: int) -> int:
    return 4 - slot % 5


def data_members(raid: int, slot: int, col: int) -> tuple[int, ...]:
    """Members holding data column ``col`` of stripe ``slot``."""
    if raid == 0:
        return (col,)
    if raid == 1:
        return (2 * col, 2 * col + 1)
    if raid == 5:
        return ((parity_member(slot) + 1 + col) % 5,)
    raise ValueError(f"unknown RAID type {raid}")


def column_of_member(slot: int, member: int) -> int | None:
    """RAID5: the data column a member holds in stripe ``slot`` (None for parity)."""
    p = parity_member(slot)
    return None if member == p else (member - p - 1) % 5


def split(off: int, n: int, su: int) -> list[tuple[int, int, int, int]]:
    """Splits segment bytes [off, off+n) into (column, offset in unit, buffer offset, length)."""
    out = []
    pos, end = off, off + n
    while pos < end:
        col, uo = divmod(pos, su)
        k = min(su - uo, end - pos)
        out.append((col, uo, pos - off, k))
        pos += k
    return out


def pseg_offset(slot: int, su: int, unit_off: int) -> int:
    """Byte offset inside a member PSEG of ``unit_off`` in stripe ``slot``."""
    return slot * su + unit_off
