"""Fixtures for the interop tests: a real vsand daemon per module or per test."""

from __future__ import annotations

import pytest

import flakydrive
from daemonkit import O_DIRECT, ROOT, SYS_PY, VSAND, Daemon, free_port, healthy, need, run  # noqa: F401 (used by the tests)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("vsand")).start()
    yield d
    rc = d.stop()
    assert rc == 0, f"daemon exit {rc}:\n{d.read_log()}"


@pytest.fixture(scope="module")
def direct_daemon(tmp_path_factory):
    """Like ``daemon``, its image files opened with O_DIRECT (``--io direct``)."""
    d = Daemon(tmp_path_factory.mktemp("vsand-direct"), extra=["--io", "direct"]).start()
    yield d
    rc = d.stop()
    assert rc == 0, f"daemon exit {rc}:\n{d.read_log()}"


def daemon_for(request, io: str) -> Daemon:
    """The module's daemon whose drives use ``io`` (buffered or direct)."""
    d = request.getfixturevalue("direct_daemon" if io == "direct" else "daemon")
    flags = d.drive_flags()
    assert flags and all(bool(f & O_DIRECT) == (io == "direct") for f in flags.values()), flags
    return d


@pytest.fixture
def fresh_daemon(tmp_path):
    d = Daemon(tmp_path / "state").start()
    yield d
    d.stop()


@pytest.fixture
def failing_drive(tmp_path, request):
    """(drive path, trigger file): see flakydrive.py; parametrize indirectly with
    "pread" or "pwrite"."""
    yield from flakydrive.failing_drive(tmp_path, request)
