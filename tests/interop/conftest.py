"""Fixtures for the interop tests: a real vsand daemon per module or per test."""

from __future__ import annotations

import pytest

from daemonkit import ROOT, SYS_PY, VSAND, Daemon, free_port, healthy, need, run  # noqa: F401 (used by the tests)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("vsand")).start()
    yield d
    rc = d.stop()
    assert rc == 0, f"daemon exit {rc}:\n{d.read_log()}"


@pytest.fixture
def fresh_daemon(tmp_path):
    d = Daemon(tmp_path / "state").start()
    yield d
    d.stop()
