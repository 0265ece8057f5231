"""Drive.fsync skips the fdatasync when nothing was written since the last one
that worked: a commit syncs every drive of the pool, most of which a FLUSH after
one 4 KiB write never touched (that made FLUSH-heavy clients 10x slower)."""

from __future__ import annotations

import os

import pytest

from vsand.errors import IOFailure
from vsand.physical.drive import Drive


def test_fsync_only_after_a_write(tmp_path, monkeypatch):
    d = Drive.open(str(tmp_path / "d.img"), 1 << 20)
    calls = []
    real = os.fdatasync

    def counted(fd):
        calls.append(fd)
        real(fd)
    monkeypatch.setattr(os, "fdatasync", counted)
    d.fsync()
    assert len(calls) == 1, "a drive just opened may hold another process's unsynced writes"
    d.fsync()
    assert len(calls) == 1
    d.pwrite(4096, b"x" * 4096)
    d.fsync()
    assert len(calls) == 2
    d.zero(0, 8192)
    d.fsync()
    d.fsync()
    assert len(calls) == 3
    d.pread(0, 4096)
    d.fsync()
    assert len(calls) == 3, "a read made the drive dirty"

    def failing(fd):
        calls.append(fd)
        raise OSError(5, "Input/output error")
    d.pwrite(0, b"y")
    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(IOFailure):
        d.fsync()
    monkeypatch.setattr(os, "fdatasync", counted)
    d.fsync()
    assert len(calls) == 5, "a failed fdatasync must be tried again by the next fsync"
    d.close()
