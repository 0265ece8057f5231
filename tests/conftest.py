"""Shared fixtures: small pools on sparse image files."""

from __future__ import annotations

import pytest

import radoskit
from poolkit import make_pool
from vsand.physical.readjob import ReadJob


@pytest.fixture(autouse=True)
def fresh_nowait_state(monkeypatch):
    """Each test starts with no run of page cache misses behind it (a process-wide
    heuristic: see ReadJob.try_now)."""
    monkeypatch.setattr(ReadJob, "missed", 0)
    monkeypatch.setattr(ReadJob, "skip", 0)


@pytest.fixture
def pool(tmp_path):
    p, paths = make_pool(tmp_path)
    p.paths = paths
    yield p
    if not p.closed:
        p.close()


def pytest_configure(config):
    radoskit.configure(config)


def pytest_sessionfinish(session):
    radoskit.finish(session.config)
