"""The daemon on real block devices (loop devices over sparse files): with ``io``
auto it opens them O_DIRECT (seen in /proc/PID/fdinfo), with buffered it does not,
and data written through NBD at offsets that are not block aligned, trimmed and
zeroed in part, reads back after a restart.
"""

from __future__ import annotations

import pytest

from conftest import O_DIRECT, ROOT, VSAND, Daemon, healthy, need, run
from loopkit import loop_devices

MiB = 1 << 20


@pytest.fixture
def loops(tmp_path):
    need("qemu-io")
    with loop_devices(tmp_path, 5, 256 * MiB) as devs:
        yield devs


def qemu_io(uri: str, *cmds: str) -> None:
    args = ["qemu-io", "-t", "writeback", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    r = run(args + [uri], timeout=60)
    assert "Pattern verification failed" not in r.stdout + r.stderr, r.stdout


@pytest.mark.parametrize("io", ["auto", "buffered"])
def test_loop_devices_as_drives(tmp_path, loops, io):
    extra = [a for dev in loops for a in ("--drive", dev)] + ["--io", io]
    d = Daemon(tmp_path / "state", extra=extra).start()
    try:
        flags = d.drive_flags()
        assert set(loops) <= set(flags), flags
        assert all(bool(flags[dev] & O_DIRECT) == (io == "auto") for dev in loops), flags
        d.ctl("lun.create", name="blk", size=64 * MiB, raid=5)
        uri = d.uri("blk")
        qemu_io(uri, "write -P 0x5a 12345 8M", "write -P 0x33 7000001 5000",
                "discard 4194304 1048576", "write -z 6000000 777", "flush")
        assert d.stop() == 0, d.read_log()
        d.start()
        flags = d.drive_flags()
        assert all(bool(flags[dev] & O_DIRECT) == (io == "auto") for dev in loops), flags
        qemu_io(uri, "read -P 0x5a 12345 4181959", "read -P 0 4194304 1048576",
                "read -P 0x5a 5242880 757120", "read -P 0 6000000 777",
                "read -P 0x5a 6000777 999224", "read -P 0x33 7000001 5000",
                "read -P 0x5a 7005001 1395952", "read -P 0 8400953 4096")
        healthy(d)
    finally:
        d.stop()
    # what the drives hold is consistent, parity included (the checker opens them too)
    run(VSAND + ["check", "--parity", *extra[:-2]], cwd=ROOT)
