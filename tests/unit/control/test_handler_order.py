"""Handlers refuse before they drop anything: a delete on a pool that cannot commit
leaves its clients connected and its tasks running (review of issue 13)."""

from __future__ import annotations

import pytest

from poolkit import make_pool
from vsand.control.handlers import Handlers
from vsand.errors import PoolReadOnly
from vsand.units import MiB


class Recorder:
    """The NBD server's and task runner's part in a delete, recorded."""

    def __init__(self):
        self.dropped, self.cancelled = [], []

    def count(self, name):
        return 1

    def disconnect(self, name, why):
        self.dropped.append(name)

    def cancel_target(self, name, why):
        self.cancelled.append(name)


def test_delete_on_a_pool_that_cannot_commit_drops_nothing(tmp_path):
    pool, _ = make_pool(tmp_path)
    pool.create_ld("x", 4 * MiB)
    rec = Recorder()
    h = Handlers(pool, rec, rec, cfg=None)
    pool.tx.fail("test: the metadata cannot be written")
    with pytest.raises(PoolReadOnly):
        h.lun_delete("x", force=True)
    assert "x" in pool.lds and rec.dropped == [] and rec.cancelled == []
