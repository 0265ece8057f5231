"""Loop devices over sparse files: real block devices for tests, detached afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

import pytest


@contextlib.contextmanager
def loop_devices(tmp_path, n: int, size: int, data: bytes | None = None):
    """``n`` loop devices over files of ``size`` bytes (sparse, or holding ``data``)
    under ``tmp_path``; skips the test without root or losetup."""
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("needs root and losetup")
    devs = []
    try:
        for i in range(n):
            img = os.path.join(str(tmp_path), f"loop{i}.img")
            with open(img, "wb") as f:
                f.truncate(size)
                if data is not None:
                    f.write(data)
            r = subprocess.run(["losetup", "--find", "--show", img], capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"losetup failed: {r.stderr.strip()}")
            devs.append(r.stdout.strip())
        yield devs
    finally:
        for dev in devs:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
