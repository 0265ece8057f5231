#!/usr/bin/env python3
"""`make run`: the daemon on the embedded default (8 sparse 4 GiB drives under
./var/demo), LUN `demo` (RAID5, 4 GiB) created on first run, connection lines
printed. Runs in the foreground; Ctrl-C (or SIGTERM) stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vsand.control.client import ControlError, call  # noqa: E402

STATE = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "var/demo")
PORT = int(os.environ.get("VSAND_PORT", "10809"))
# the status page and /metrics, on loopback; 0 = off
HTTP_PORT = int(os.environ.get("VSAND_HTTP_PORT", "9187"))


def main() -> int:
    control = os.path.join(STATE, "control.sock")
    sock = os.path.join(STATE, "nbd.sock")
    os.makedirs(STATE, exist_ok=True)
    if os.path.exists(control):
        try:
            call(control, "status", timeout=2)
            print(f"a vsand daemon already serves {STATE}; stop it first", file=sys.stderr)
            return 1
        except ControlError:
            os.unlink(control)
    http = ["--metrics", f"127.0.0.1:{HTTP_PORT}"] if HTTP_PORT else []
    proc = subprocess.Popen([sys.executable, "-m", "vsand", "--state-dir", STATE,
                             "--listen", f"127.0.0.1:{PORT}", *http])
    signal.signal(signal.SIGINT, lambda *_: proc.send_signal(signal.SIGTERM))
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    for _ in range(300):
        if proc.poll() is not None:
            return proc.returncode
        try:
            call(control, "status", timeout=2)
            break
        except ControlError:
            time.sleep(0.1)
    else:
        proc.terminate()
        return 1
    if "demo" not in [x["name"] for x in call(control, "lun.list")]:
        call(control, "lun.create", name="demo", size=4 << 30, raid=5)
        print("created LUN demo (RAID5, 4 GiB)")
    venv = os.path.dirname(sys.executable)
    page = (f"Watch it in a browser (status page; Prometheus metrics at /metrics):\n"
            f"  http://127.0.0.1:{HTTP_PORT}/\n") if HTTP_PORT else ""
    print(f"""
vsand is serving {STATE} (Ctrl-C stops it). Connect with:
  nbdinfo --list nbd://127.0.0.1:{PORT}
  nbdinfo 'nbd+unix:///demo?socket={sock}'
  nbd-client 127.0.0.1 {PORT} /dev/nbd0 -N demo -b 4096     # needs the nbd kernel module
  mkdir -p /tmp/demo-fuse && nbdfuse /tmp/demo-fuse nbd://127.0.0.1:{PORT}/demo &   # file /tmp/demo-fuse/nbd
  qemu-img info nbd://127.0.0.1:{PORT}/demo
{page}Manage it with:
  {venv}/vsanctl --control {control} lun list
""", flush=True)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
