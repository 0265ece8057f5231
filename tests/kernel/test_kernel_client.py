"""vsand under the real Linux NBD client: nbd.ko + nbd-client in a QEMU guest.

The guest (guest.py, guest_init.sh) formats the LUN with ext4, writes files, runs fio
with crc32c verification on the filesystem and on the raw /dev/nbd0, trims, and checks
every file after a disconnect and reconnect. A negative control runs the same guest
against a LUN whose writes the daemon drops (VSAND_DROP_WRITES): it must FAIL.
"""

from __future__ import annotations

import pytest

import guest
from daemonkit import O_DIRECT, ROOT, VSAND, Daemon, healthy, need, run

SIZE = 512 << 20
# mount reads back what mkfs wrote; every step after it checks data too.
DATA_STEPS = {"mount", "write-files", "fio-ext4", "remount", "check-files", "fsck", "fio-raw"}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    if missing := guest.missing_tools():
        pytest.skip(f"not installed: {' '.join(missing)} (make test installs them as root)")
    try:
        k = guest.kernel()
        initrd = guest.initramfs(k, str(tmp_path_factory.mktemp("guest") / "initrd.cpio"))
    except guest.Unavailable as e:
        pytest.skip(f"cannot build the guest: {e}")
    return k, initrd


def start(tmp_path, io: str = "auto", **env) -> Daemon:
    return Daemon(tmp_path / "state", drives=6, drive_size="1G", extra=["--io", io], env=env).start()


def quiet_log(d: Daemon) -> None:
    """The guest's connections (incl. QEMU's unused one dropped at power-off) must not
    produce errors in the daemon's log."""
    healthy(d)
    bad = [line for line in d.read_log().splitlines() if " ERROR " in line or " WARNING " in line]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("io", ["buffered", "direct"])
def test_kernel_client_ext4_fio_reconnect_and_snapshot(kit, tmp_path, io):
    """With ``io`` direct (O_DIRECT image files) only the first session runs: the
    snapshot session tests snapshots, which the drive I/O mode does not change."""
    need("qemu-io")
    k, initrd = kit
    d = start(tmp_path, io)
    try:
        flags = d.drive_flags()
        assert flags and all(bool(f & O_DIRECT) == (io == "direct") for f in flags.values()), flags
        d.ctl("lun.create", name="kern", size=SIZE, raid=5)
        r = guest.boot(k, initrd, d.sock, "kern", "full")
        assert r.passed, f"guest failed at {r.step}: {r.detail}\n{r}"
        quiet_log(d)
        info = d.ctl("lun.show", name="kern")
        # 9 MiB of files + filesystem metadata + 32 MiB raw fio; the 8 MiB fio file was
        # trimmed away. Far below the 288 MiB the guest touched at some point.
        assert info["allocated"] < 160 << 20, info
        if io == "buffered":
            snapshot_session(d, k, initrd)
    finally:
        d.stop()
    # The pool the kernel wrote through is consistent on disk, parity included.
    run(VSAND + ["check", "--parity", d.state_dir], cwd=ROOT)


def snapshot_session(d: Daemon, k, initrd) -> None:
    """The host overwrites the LUN's filesystem, which must not reach the snapshot
    the guest then mounts."""
    d.ctl("snapshot.create", source="kern", name="kern-snap")
    run(["qemu-io", "-f", "raw", "-t", "writeback", "-c", "write -P 0xab 0 256M",
         "-c", "flush", d.uri("kern")])
    # socat_delay: the guest starts socat 2 s late, as a busy machine once did; it
    # must wait for the listener instead of getting "Connection refused".
    r = guest.boot(k, initrd, d.sock, "kern-snap", "verify", socat_delay=2)
    assert r.passed, f"snapshot session failed at {r.step}: {r.detail}\n{r}"
    run(["qemu-io", "-f", "raw", "-c", "read -P 0xab 0 256M", d.uri("kern")])
    quiet_log(d)


def test_negative_control_dropped_writes_fail(kit, tmp_path):
    k, initrd = kit
    d = start(tmp_path, VSAND_DROP_WRITES="dropped")
    try:
        d.ctl("lun.create", name="dropped", size=SIZE, raid=5)
        r = guest.boot(k, initrd, d.sock, "dropped", "full")
        assert not r.passed, f"the guest passed on a LUN that drops every write:\n{r}"
        # It must fail because the data is wrong, not because the guest never ran.
        assert r.step in DATA_STEPS, f"failed at {r.step} ({r.detail}), not at a data check\n{r}"
        healthy(d)
    finally:
        d.stop()
