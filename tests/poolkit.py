"""Small pools on sparse image files, for tests at every level."""

from __future__ import annotations

import os

from vsand.disk.pool import Pool
from vsand.units import MiB, Units

SMALL = Units(quorum=8 * MiB)


def make_pool(tmp_path, n: int = 8, size: int = 128 * MiB, units: Units = SMALL, sizes=None) -> tuple[Pool, list[str]]:
    sizes = sizes or [size] * n
    specs = [(os.path.join(str(tmp_path), f"d{i:02d}.img"), s, "default") for i, s in enumerate(sizes)]
    return Pool.create(specs, units), [p for p, _, _ in specs]


class NoFence:
    """A read fence with nothing to fence: for ReadJobs made by hand."""
    moves = 0

    def begin(self):
        return 0

    def end(self, token):
        pass
