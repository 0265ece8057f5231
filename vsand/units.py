"""Pool-creation units (DESIGN.md §2).

They are settings chosen when a pool is created and stored in its labels and
superblock; the code reads them from a ``Units`` instance instead of using
module constants, so a test pool can use a small quorum space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

SECTOR = 512


@dataclass(frozen=True)
class Units:
    pseg: int = 2 * MiB
    segment: int = 1 * MiB
    rstore_segments: int = 8
    lmap_segments: int = 2048
    l2map_entries: int = 1024
    stripe_unit: int = 256 * KiB
    quorum: int = 64 * MiB

    def __post_init__(self) -> None:
        # The RAID geometry assumes one segment is one full stripe of 4 data columns
        # and that a column of an RStore fills exactly one PSEG.
        assert self.segment == 4 * self.stripe_unit, "segment must be 4 stripe units"
        assert self.rstore_segments * self.stripe_unit == self.pseg, "a column must fill one PSEG"
        assert self.quorum % self.pseg == 0 or self.quorum % MiB == 0

    @property
    def rstore(self) -> int:
        return self.segment * self.rstore_segments

    @property
    def lmap_bytes(self) -> int:
        return self.segment * self.lmap_segments

    @property
    def max_ld_size(self) -> int:
        return self.lmap_bytes * self.l2map_entries

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Units":
        return cls(**{k: int(v) for k, v in d.items() if k in cls.__dataclass_fields__})


def parse_size(text: str | int) -> int:
    """'4G', '512M', '1T', '4096' -> bytes (binary multiples, as admins expect of disks)."""
    if isinstance(text, int):
        return text
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": KiB, "M": MiB, "G": GiB, "T": TiB, "P": 1024 * TiB}
    try:
        if s and s[-1] in mult:
            return int(float(s[:-1]) * mult[s[-1]])
        return int(s)
    except (ValueError, OverflowError):   # "infG" overflows int()
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 4G, 1T)") from None


def format_size(n: int) -> str:
    for unit, m in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= m and n % (m // 1024 if m > KiB else 1) == 0:
            v = n / m
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.2f} {unit}"
    return f"{n} B"
