"""Drive.timeout (issue 12 item 1): a read or write that returns after the limit is
an I/O error naming the time it took, so the RAID layer serves the read from
redundancy and the detector counts it; 0 means no limit; fdatasync has none."""

from __future__ import annotations

import pytest

from vsand.errors import IOFailure
from vsand.physical import drive as drive_mod
from vsand.physical.drive import Drive


class SlowClock:
    """time.monotonic that advances ``step`` seconds at every call."""

    def __init__(self, step: float):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


@pytest.mark.parametrize("direct", [False, True])
def test_a_call_over_the_timeout_is_an_io_error(tmp_path, monkeypatch, direct):
    d = Drive.open(str(tmp_path / "d.img"), 1 << 20, io="direct" if direct else "buffered")
    d.pwrite(0, b"a" * 4096)
    monkeypatch.setattr(drive_mod.time, "monotonic", SlowClock(3.0))
    assert d.pread(0, 4096) == b"a" * 4096          # no limit set
    d.timeout = 2
    with pytest.raises(IOFailure, match=r"read .*took 3\.0 s, over the 2 s drive timeout"):
        d.pread(0, 4096)
    buf = bytearray(4096)
    with pytest.raises(IOFailure, match="drive timeout"):
        d.readinto(0, memoryview(buf))
    with pytest.raises(IOFailure, match=r"write .*drive timeout"):
        d.pwrite(4096, b"b" * 4096)
    d.fsync()                                         # never timed
    d.timeout = 4
    assert d.pread(4096, 4096) == b"b" * 4096         # the late write did land
    d.close()


def test_the_daemon_setting(tmp_path):
    from vsand.config import load
    assert load(["--state-dir", str(tmp_path), "--drive-timeout", "5s"]).drive_timeout == 5
    assert load(["--state-dir", str(tmp_path), "--drive-timeout", "off"]).drive_timeout == 0
    assert load(["--state-dir", str(tmp_path)]).drive_timeout == 30
    toml = tmp_path / "v.toml"
    toml.write_text('drive_timeout = "2m"\n')
    assert load(["--state-dir", str(tmp_path), "--config", str(toml)]).drive_timeout == 120
    with pytest.raises(SystemExit):
        load(["--state-dir", str(tmp_path), "--drive-timeout", "soon"])
