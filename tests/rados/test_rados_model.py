"""The stateful engine models on the RADOS backend (issue 15): the snapshot model
(tests/model/test_snapshot_model.py) and the snapclone/BGCOPY model
(test_snapclone_model.py) run unchanged, rules and invariants alike, on a pool whose
drives are ``RadosDrive`` objects of ``plugins.rados.backend.RadosBackend`` in the
run's test cluster, with the backend's own formatting (its quorum space of omap values,
one quorum copy).

Only where the drives live differs. Each example gets a namespace of its own and a
backend that claims it (lock and watch on the metadata object). Every pool the model
opens after one it stopped gets a new backend, so what it reads back comes from RADOS,
not from the old client's memory:

- a clean restart (``pool.close()``): the old backend releases the lock, and a new one
  claims it as a restarted daemon does;
- a crash restart (the pool dropped without a close, kill -9): the old client goes away
  holding the lock (``close(release=False)``); the lock must still name it, and the new
  backend breaks it (``break_lock``) and claims the pool (a new epoch).

The commit fault rules stay: ``FaultRadosDrive`` puts the same fault rules
(tests/faultdrive.py) in front of a RadosDrive, and a persistent fault's superblock is
read back from the omap of the metadata object.

Sizes are the models' own (8 drives of 128 MiB, or 20 MiB in tight pools; PSEG objects
exist only where written), with fewer examples: every write is a network op.
``VSAND_RADOS_MODEL_EXAMPLES`` overrides the example count of both (default 15).
"""

from __future__ import annotations

import os
import sys
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from daemonkit import ROOT

sys.path.insert(0, os.path.join(ROOT, "tests", "model"))
from faultdrive import FaultCalls, Faults  # noqa: E402
from test_snapclone_model import SnapcloneMachine  # noqa: E402
from test_snapshot_model import SnapshotMachine  # noqa: E402

from plugins.rados import Cluster, ObjectNotFound  # noqa: E402
from plugins.rados.backend import RadosBackend  # noqa: E402
from plugins.rados.drive import QBLOCK, RadosDrive, pseg_oid, qkey  # noqa: E402
from plugins.rados.owner import LOCK_NAME, META_OID  # noqa: E402
from vsand.disk.pool import Pool  # noqa: E402
from vsand.units import Units  # noqa: E402

NDRIVES = 8
EXAMPLES = int(os.environ.get("VSAND_RADOS_MODEL_EXAMPLES", "15"))


class FaultRadosDrive(FaultCalls, RadosDrive):
    """A RadosDrive behind the fault rules of a ``RadosFaults``."""
    faults: "RadosFaults"

    def pread(self, off, n):
        # RadosDrive.pread reads through readinto: one call, counted once
        buf = bytearray(n)
        self.readinto(off, memoryview(buf))
        return bytes(buf)

    def pwrite(self, off, data):
        self.faults.note_write(self, off, len(data))
        super().pwrite(off, data)

    def zero(self, off, n):
        self.faults.note_write(self, off, n)
        super().zero(off, n)

    def read_back(self, off: int, n: int) -> bytes:
        """Quorum-space bytes as the metadata object holds them now (not as this drive
        remembers them): commit_faults.newest_superblock reads superblocks with it."""
        first, last = off // QBLOCK, (off + n - 1) // QBLOCK
        kv = self.backend.io.omap_get(META_OID, prefix=f"q{self.index:03d}.")
        buf = b"".join(kv.get(qkey(self.index, b), bytes(QBLOCK)) for b in range(first, last + 1))
        return buf[off - first * QBLOCK:][:n]


class RadosFaults(Faults):
    """The drive factory of one example: a backend per pool instance, on one namespace."""

    def __init__(self, cluster):
        super().__init__()
        self.cluster = cluster
        self.ns = f"model-{uuid.uuid4().hex[:12]}"
        self.backend = self._backend()
        self.backend.claim()
        self.pool: Pool | None = None       # the pool the machine runs on
        self.closed_cleanly = False         # its close() was called
        self.touched: set[str] = set()      # PSEG objects written, removed at the end

    def _backend(self) -> RadosBackend:
        return RadosBackend(self.cluster.conf, self.cluster.pool, self.ns, timeout=30)

    def watch(self, pool: Pool) -> None:
        """Notes whether ``pool`` is stopped by close() or dropped (kill -9)."""
        self.pool, self.closed_cleanly = pool, False
        close = pool.close

        def clean_close():
            if not pool.closed:
                self.closed_cleanly = True
            close()
        pool.close = clean_close

    def open(self, path: str, create_size: int | None = None) -> FaultRadosDrive:
        if self.pool is not None and self.pool.closed:     # a new start: a new client
            self._restart()
        d = self.backend.open_drive(path, create_size)
        d.__class__ = FaultRadosDrive       # same object, fault rules in front of its calls
        d.faults = self
        return d

    def _restart(self) -> None:
        old, clean = self.backend, self.closed_cleanly
        self.pool = None
        old.close(release=clean)
        new = self._backend()
        holder = new.owner.holder()
        if clean:
            assert holder is None, f"a clean stop left the lock held: {holder}"
            new.claim()
        else:
            assert holder is not None and holder.cookie == old.owner.cookie, \
                f"after a kill -9 the lock should still name the dead client: {holder}"
            # The dead client is gone (no blocklist needed: Owner.take_over's fencing, a
            # mon command and an OSD map per restart, made the module three times slower;
            # tests/rados/test_rados_takeover.py covers it): break its lock, then claim.
            new.io.break_lock(META_OID, LOCK_NAME, holder.client, holder.cookie)
            new.claim()
        assert new.epoch == old.epoch + 1, f"epoch {old.epoch} -> {new.epoch}"
        self.backend = new

    def note_write(self, drive: RadosDrive, off: int, n: int) -> None:
        lo = max(off, drive.quorum)
        for i in range((lo - drive.quorum) // drive.pseg, (off + n - drive.quorum - 1) // drive.pseg + 1):
            self.touched.add(pseg_oid(drive.index, i))

    def remove_all(self) -> None:
        """Removes the example's objects: PSEGs written and the metadata object."""
        self.backend.close()
        with Cluster(self.cluster.conf, timeout=30) as c, c.open_ioctx(self.cluster.pool, self.ns) as io:
            for oid in sorted(self.touched) + [META_OID]:
                try:
                    io.remove(oid)
                except ObjectNotFound:
                    pass


class OnRados:
    """Overrides of the models' pool creation: everything else is the model's."""

    def __init__(self, cluster):
        super().__init__()
        self.cluster = cluster

    def _new_faults(self) -> RadosFaults:
        return RadosFaults(self.cluster)

    def _create_pool(self, units: Units, size: int) -> tuple[Pool, list[str]]:
        b = self.faults.backend
        assert (units.quorum, units.pseg) == (b.quorum, b.pseg), "the model's units are not the backend's"
        paths = b.paths(NDRIVES)
        pool = Pool.create([(p, size, "default") for p in paths], units,
                           drive_factory=self.faults.open, quorum_copies=b.quorum_copies)
        return pool, paths

    def _set_pool(self, pool: Pool) -> None:
        super()._set_pool(pool)
        self.faults.watch(pool)
        # what a restarted daemon finds: its pool's drives, formatted
        assert self.faults.backend.paths(NDRIVES) == self.paths

    def teardown(self):
        try:
            super().teardown()
        finally:
            if getattr(self, "faults", None) is not None:
                self.faults.remove_all()


class RadosSnapshotMachine(OnRados, SnapshotMachine):
    pass


class RadosSnapcloneMachine(OnRados, SnapcloneMachine):
    pass


SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("machine", [RadosSnapshotMachine, RadosSnapcloneMachine],
                         ids=["snapshot", "snapclone"])
def test_engine_model_on_rados(rados_cluster, machine):
    run_state_machine_as_test(lambda: machine(rados_cluster), settings=SETTINGS)
