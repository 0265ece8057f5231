"""QEMU's NBD client (qemu-io, qemu-img) against the REAL daemon.

qemu-io: pattern writes and `read -P` checks, FUA writes (`write -f`), WRITE_ZEROES
with and without unmap (`write -z [-u]`), discard, unaligned offsets and a 32 MiB
request; every run is then compared byte for byte with a model of the LUN.
A FUA write (and a plain write + FLUSH) must survive a SIGKILL of the daemon while
qemu-io is still connected. qemu-img: convert file -> LUN -> file (sha256),
compare (also that it sees a one-byte difference) and map (holes vs data at the
pool's 1 MiB segment granularity).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import healthy, need, run

MiB = 1 << 20
SIZE = 64 * MiB


def qemu_io(uri: str, *cmds: str, ro: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    # writeback: qemu-io's default (writethrough) would add a FLUSH/FUA to every write
    args = ["qemu-io", "-t", "writeback", "-f", "raw"] + (["-r"] if ro else [])
    for c in cmds:
        args += ["-c", c]
    r = run(args + [uri], check=check)
    if check:
        out = r.stdout + r.stderr
        assert "Pattern verification failed" not in out and "failed" not in out.lower(), out
    return r


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(4 * MiB), b""):
            h.update(b)
    return h.hexdigest()


def lun_image(uri: str, path) -> bytes:
    """The whole LUN, read through qemu-img convert (a separate qemu client)."""
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(path)])
    with open(path, "rb") as f:
        return f.read()


def first_diff(a: bytes, b: bytes) -> int | None:
    if a == b:
        return None
    return next(i for i in range(0, len(a), 4096) if a[i:i + 4096] != b[i:i + 4096])


# ---- qemu-io ----------------------------------------------------------------------------------
class Model:
    """The expected LUN contents and the qemu-io commands that produce them."""

    def __init__(self, size: int):
        self.mem = bytearray(size)
        self.cmds: list[str] = []
        self.checks: list[str] = []

    def write(self, pat: int, off: int, n: int, fua: bool = False) -> None:
        self.cmds.append(f"write {'-f ' if fua else ''}-P {pat:#x} {off} {n}")
        self.mem[off:off + n] = bytes([pat]) * n

    def aio_writes(self, base: int, count: int, n: int) -> None:
        """``count`` concurrent writes of distinct patterns, then aio_flush."""
        for i in range(count):
            pat = 0x80 + i
            off = base + ((i * 7) % count) * n          # not in offset order
            self.cmds.append(f"aio_write {'-f ' if i % 5 == 0 else ''}-P {pat:#x} {off} {n}")
            self.mem[off:off + n] = bytes([pat]) * n
        self.cmds.append("aio_flush")

    def zero(self, off: int, n: int, unmap: bool = False) -> None:
        self.cmds.append(f"write -z {'-u ' if unmap else ''}{off} {n}")
        self.mem[off:off + n] = bytes(n)

    def discard(self, off: int, n: int) -> None:
        self.cmds.append(f"discard {off} {n}")
        self.mem[off:off + n] = bytes(n)          # vsand: trimmed bytes read as zeros

    def expect_runs(self) -> list[str]:
        """`read -P` for every run of equal bytes (at most 4 MiB each)."""
        a = np.frombuffer(bytes(self.mem), dtype=np.uint8)
        starts = [0] + (np.flatnonzero(a[1:] != a[:-1]) + 1).tolist() + [len(a)]
        out = []
        for i, j in zip(starts, starts[1:]):
            for k in range(i, j, 4 * MiB):
                out.append(f"read -P {a[i]:#x} {k} {min(j, k + 4 * MiB) - k}")
        return out


def build_model() -> Model:
    m = Model(SIZE)
    m.write(0xAB, 0, MiB)
    m.write(0xCD, 1000, 3333)                     # unaligned, inside written data
    m.write(0x11, 2 * MiB, 64 << 10, fua=True)    # FUA
    m.write(0x12, 3 * MiB + 17, 5000, fua=True)   # FUA, unaligned, fresh segment
    m.write(0x77, 4 * MiB - 3, 6)                 # straddles a segment boundary
    m.write(0x33, 6 * MiB, 2 * MiB)
    m.zero(4 * MiB + 512, 2 * MiB)                # WRITE_ZEROES, NO_HOLE (no -u)
    m.zero(6 * MiB, MiB, unmap=True)              # whole segment, may unmap
    m.zero(7 * MiB + 100, 1000, unmap=True)       # partial
    m.write(0x44, 8 * MiB, 4 * MiB)
    m.discard(9 * MiB, 2 * MiB)                   # whole segments
    m.discard(11 * MiB + 12345, 1000)             # unaligned
    m.aio_writes(12 * MiB + 4096, 64, 60000)      # 64 requests in flight at once
    m.write(0x5A, 16 * MiB, 32 * MiB)             # one 32 MiB request
    m.write(0x5B, 48 * MiB + 1, 12 * MiB + 3)     # a big unaligned one
    m.write(0xEE, SIZE - 1, 1)                    # the last byte
    return m


@pytest.mark.parametrize("raid", [0, 1, 5])
def test_qemu_io_patterns(daemon, tmp_path, raid):
    need("qemu-io", "qemu-img")
    name = f"qio-r{raid}"
    daemon.ctl("lun.create", name=name, size=SIZE, raid=raid)
    uri = daemon.uri(name)
    m = build_model()
    # all the writes, then spot checks on the same connection
    cmds = list(m.cmds)
    cmds += ["flush", "read -P 0xab 0 1000", "read -P 0xcd 1000 3333", "read -P 0xab 4333 1044243",
             "read -P 0x5a 16M 32M", "read -P 0 9M 2M", "read -P 0x77 4194301 6",
             "read -P 0 4194307 505"]
    qemu_io(uri, *cmds)
    # a new connection (TCP this time) checks every run of the model
    qemu_io(daemon.uri(name, tcp=True), *m.expect_runs(), ro=True)
    # and a third client compares every byte
    got = lun_image(uri, tmp_path / "lun.raw")
    assert first_diff(got, bytes(m.mem)) is None, f"first difference at {first_diff(got, bytes(m.mem))}"
    # a mismatching pattern is noticed (the checks above can fail)
    r = qemu_io(uri, "read -P 0xac 0 1M", ro=True, check=False)
    assert r.returncode != 0 and "Pattern verification failed" in r.stdout + r.stderr
    healthy(daemon)


class Interactive:
    """qemu-io reading commands from a pipe. It handles one line per read of its
    stdin, so commands go one at a time, each after the previous one's prompt.
    Cache mode writeback, so a plain write is not made durable by qemu itself
    (checked by hand: such a write is lost by the SIGKILL below, a `write -f` is not)."""

    def __init__(self, uri: str):
        self.p = subprocess.Popen(["stdbuf", "-oL", "qemu-io", "-t", "writeback", "-f", "raw", uri],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.out = b""
        self.wait_for("qemu-io> ")

    def wait_for(self, want: str, timeout: float = 30) -> str:
        fd, deadline = self.p.stdout.fileno(), time.monotonic() + timeout
        while want.encode() not in self.out:
            left = deadline - time.monotonic()
            assert left > 0, f"no {want!r} from qemu-io: {self.out!r}"
            if select.select([fd], [], [], left)[0]:
                got = os.read(fd, 65536)
                assert got, f"qemu-io ended: {self.out!r}"
                self.out += got
        before, self.out = self.out.split(want.encode(), 1)
        return before.decode(errors="replace")

    def do(self, cmd: str) -> str:
        """Runs one command; returns its output once the next prompt shows."""
        self.p.stdin.write(cmd.encode() + b"\n")
        self.p.stdin.flush()
        text = self.wait_for("qemu-io> ")
        assert "error" not in text.lower() and "failed" not in text.lower(), f"{cmd!r}: {text}"
        return text

    def kill(self) -> None:
        self.p.kill()
        self.p.wait()


@pytest.mark.parametrize("how", ["fua", "flush"])
def test_fua_and_flush_survive_daemon_kill(fresh_daemon, how):
    """The reply to a FUA write (or to a FLUSH after a plain write) means the data
    is on stable storage: SIGKILL the daemon while qemu-io is still connected,
    restart it, and read the data back."""
    need("qemu-io", "stdbuf")
    d = fresh_daemon
    d.ctl("lun.create", name="dur", size=SIZE, raid=5)
    uri = d.uri("dur")
    q = Interactive(uri)
    try:
        if how == "fua":
            assert "wrote 70000/70000" in q.do(f"write -f -P 0x21 {MiB + 7} 70000")
        else:
            assert "wrote 3145728/3145728" in q.do(f"write -P 0x22 {5 * MiB} {3 * MiB}")
            q.do("flush")                 # prints nothing; the prompt comes after the reply
        d.stop(signal.SIGKILL)            # qemu-io is still connected: no close-time flush
    finally:
        q.kill()
    d.start()
    if how == "fua":
        qemu_io(uri, f"read -P 0x21 {MiB + 7} 70000", f"read -P 0 {MiB} 7", ro=True)
    else:
        qemu_io(uri, f"read -P 0x22 {5 * MiB} {3 * MiB}", ro=True)
    healthy(d)


# ---- qemu-img ---------------------------------------------------------------------------------
PIECES = [(0, 3 * MiB), (5 * MiB + 12345, 700000), (8 * MiB, 8 * MiB), (20 * MiB, MiB),
          (40 * MiB + 4096, 4096), (SIZE - MiB, MiB)]


@pytest.fixture(scope="module")
def sparse_src(tmp_path_factory):
    """A sparse raw image: random data in PIECES, holes elsewhere."""
    path = tmp_path_factory.mktemp("qimg") / "src.raw"
    r = random.Random(7)
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for off, n in PIECES:
            f.seek(off)
            f.write(r.randbytes(n))
    return path


def expected_map(src) -> list[tuple[int, int, bool]]:
    """(start, length, data) runs: a 1 MiB segment is data iff the source has a
    non-zero byte in it (qemu-img convert skips / zeroes the all-zero ones)."""
    with open(src, "rb") as f:
        img = f.read()
    zero = bytes(MiB)
    runs: list[list] = []
    for s in range(0, SIZE, MiB):
        data = img[s:s + MiB] != zero
        if runs and runs[-1][2] == data:
            runs[-1][1] += MiB
        else:
            runs.append([s, MiB, data])
    return [tuple(x) for x in runs]


def qemu_map(uri: str) -> list[tuple[int, int, bool]]:
    js = json.loads(run(["qemu-img", "map", "-f", "raw", "--output=json", uri]).stdout)
    runs: list[list] = []
    for e in js:
        assert e["present"] is True
        assert e["zero"] is (not e["data"]), e      # vsand's holes read as zeros, data is data
        if runs and runs[-1][2] == e["data"] and runs[-1][0] + runs[-1][1] == e["start"]:
            runs[-1][1] += e["length"]
        else:
            runs.append([e["start"], e["length"], e["data"]])
    return [tuple(x) for x in runs]


@pytest.mark.parametrize("raid", [0, 1, 5])
def test_qemu_img_convert_compare_map(daemon, sparse_src, tmp_path, raid):
    need("qemu-img", "qemu-io")
    name = f"qimg-r{raid}"
    daemon.ctl("lun.create", name=name, size=SIZE, raid=raid)
    uri = daemon.uri(name)
    qemu_io(uri, f"write -P 0xee 0 {SIZE}")      # junk the source's holes must overwrite
    assert qemu_map(uri) == [(0, SIZE, True)]

    run(["qemu-img", "convert", "-n", "-W", "-m", "8", "-f", "raw", "-O", "raw", str(sparse_src), uri])
    r = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(sparse_src), uri])
    assert "Images are identical" in r.stdout
    assert qemu_map(uri) == expected_map(sparse_src)

    out = tmp_path / "back.raw"
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(out)])
    assert sha256_file(out) == sha256_file(sparse_src)
    # the copy back equals the LUN over TCP as well
    r = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(out), daemon.uri(name, tcp=True)])
    assert "Images are identical" in r.stdout

    # one changed byte is seen by compare (exit 1) and by map (a hole becomes data)
    qemu_io(uri, f"write -P 0x01 {30 * MiB + 5} 1")
    r = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(sparse_src), uri], check=False)
    assert r.returncode == 1 and f"Content mismatch at offset {30 * MiB}!" in r.stdout, r   # sector granularity
    assert (30 * MiB, MiB, True) in qemu_map(uri)
    healthy(daemon)


def test_qemu_img_info_and_size(daemon):
    need("qemu-img")
    daemon.ctl("lun.create", name="qinfo", size=3 << 30, raid=1)
    for tcp in (False, True):
        js = json.loads(run(["qemu-img", "info", "--output=json", daemon.uri("qinfo", tcp=tcp)]).stdout)
        assert js["virtual-size"] == 3 << 30 and js["format"] == "raw"
    # a 3 GiB thin LUN maps as one hole
    js = json.loads(run(["qemu-img", "map", "-f", "raw", "--output=json", daemon.uri("qinfo")]).stdout)
    assert [(e["start"], e["length"], e["data"], e["zero"]) for e in js] == [(0, 3 << 30, False, True)]
