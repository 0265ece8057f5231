"""Fixtures for the RADOS tests: the run's shared Ceph clusters (tests/radoskit.py):
``rados_cluster`` (1 OSD) for most, ``rados3`` (3 OSDs, pool size 3 / min_size 2) for tests
that kill OSDs."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

from daemonkit import ROOT

if ROOT not in sys.path:        # plugins/ is not installed into the venv; import it from the tree
    sys.path.insert(0, ROOT)

import radoskit  # noqa: E402


@pytest.fixture(scope="session")
def rados_cluster():
    cluster, reason = radoskit.shared_cluster()
    if cluster is None:
        pytest.skip(reason)
    return cluster


@pytest.fixture(autouse=True)
def rados_use(request):
    if "rados3" in request.fixturenames:       # holds its own cluster; do not start ONE
        yield
        return
    request.getfixturevalue("rados_cluster")
    with radoskit.cluster_use(request.node.get_closest_marker("rados_exclusive") is not None):
        yield


@pytest.fixture(scope="session")
def rados3_cluster():
    cluster, reason = radoskit.shared_cluster(radoskit.THREE)
    if cluster is None:
        pytest.skip(reason)
    return cluster


@pytest.fixture
def rados3(rados3_cluster):
    """The 3-OSD cluster, this test's alone, healthy at the start. OSDs the test left
    dead are started again afterwards, and recovery is waited for so the next test
    starts healthy."""
    with radoskit.cluster_use(True, radoskit.THREE):
        rados3_cluster.wait_healthy()
        try:
            yield rados3_cluster
        finally:
            for osd in range(rados3_cluster.n_osds):
                if not rados3_cluster.osd_running(osd):
                    rados3_cluster.start_osd(osd)


@pytest.fixture
def rados_ns():
    """A namespace of this test's own: objects of other tests and workers stay out of sight."""
    return f"t-{os.getpid()}-{uuid.uuid4().hex[:8]}"
