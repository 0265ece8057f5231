"""Fixtures for the RADOS tests: the run's shared Ceph cluster (tests/radoskit.py)."""

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
def rados_use(request, rados_cluster):
    with radoskit.cluster_use(request.node.get_closest_marker("rados_exclusive") is not None):
        yield


@pytest.fixture
def rados_ns():
    """A namespace of this test's own: objects of other tests and workers stay out of sight."""
    return f"t-{os.getpid()}-{uuid.uuid4().hex[:8]}"
