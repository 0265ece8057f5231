"""Shared fixtures: small pools on sparse image files."""

from __future__ import annotations

import pytest

from poolkit import make_pool

@pytest.fixture
def pool(tmp_path):
    p, paths = make_pool(tmp_path)
    p.paths = paths
    yield p
    if not p.closed:
        p.close()
