"""libnbd's clients (nbdinfo, nbdcopy, nbdsh) against the REAL daemon.

What a libnbd user sees: the export list with descriptions, the capability bits,
base:allocation maps after writes / zeroes / trims, byte-exact nbdcopy round trips
(one and four connections), option-level behaviour through the Python binding
(structured replies, DF reads, block status, NO_HOLE zeroes, FLUSH, FUA) and
multi-conn durability: a write replied to on connection A, a FLUSH on B, then a
read on C -- and the data still there after the daemon is SIGKILLed and restarted
(NBD-NOTES §1.4, §1.6, §1.10, §1.11).

nbdsh and the libnbd binding exist only for the system Python, so every nbdsh
script runs as a subprocess with /usr/bin first in PATH (nbdsh runs `python3 -m nbd`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import textwrap

import pytest

from conftest import healthy, need, run

MiB = 1 << 20
SYS_PY = "/usr/bin/python3"
SYS_ENV = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))
HOLE, ZERO = 1, 2       # NBD_STATE_HOLE, NBD_STATE_ZERO


def need_nbdsh() -> None:
    need("nbdsh")
    if run([SYS_PY, "-c", "import nbd"], check=False).returncode != 0:
        pytest.skip("the libnbd Python binding (python3-libnbd) is not installed for /usr/bin/python3")


def nbdsh(uri: str, script: str, *opts: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs ``script`` in nbdsh connected to ``uri`` (handle ``h``); a failed assert
    makes nbdsh exit non-zero."""
    return run(["nbdsh", *opts, "-u", uri, "-c", textwrap.dedent(script)], check=check, env=SYS_ENV)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(4 * MiB), b""):
            h.update(b)
    return h.hexdigest()


def make_lun(daemon, name: str, size: int = 64 * MiB, raid: int = 5) -> str:
    daemon.ctl("lun.create", name=name, size=size, raid=raid)
    return name


def list_uri(daemon, transport: str) -> str:
    """A URI with no export name, for --list."""
    if transport == "tcp":
        return f"nbd://127.0.0.1:{daemon.port}/"
    return f"nbd+unix:///?socket={daemon.sock}"


def nbdinfo_map(uri: str) -> list[tuple[int, int, int]]:
    out = run(["nbdinfo", "--map", "--json", uri]).stdout
    return [(e["offset"], e["length"], e["type"]) for e in json.loads(out)]


def merged(runs):
    """[(offset, length, type)] with adjacent equal types merged."""
    out: list[list[int]] = []
    for off, n, t in runs:
        if out and out[-1][2] == t and out[-1][0] + out[-1][1] == off:
            out[-1][1] += n
        else:
            out.append([off, n, t])
    return [tuple(x) for x in out]


# ---- nbdinfo ------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_list_shows_every_lun_with_description(daemon, transport):
    need("nbdinfo")
    want = {}
    for name, size, raid in ((f"ls-{transport}-a", 64 * MiB, 0), (f"ls-{transport}-b", 128 * MiB, 1),
                             (f"ls-{transport}-c", 3 << 30, 5)):
        make_lun(daemon, name, size, raid)
        want[name] = (size, raid)
    all_luns = {i["name"]: i for i in daemon.ctl("lun.list")}
    units = {64 * MiB: "64 MiB", 128 * MiB: "128 MiB", 3 << 30: "3 GiB"}

    js = json.loads(run(["nbdinfo", "--list", "--json", list_uri(daemon, transport)]).stdout)
    assert js["protocol"] == "newstyle-fixed" and js["structured"] is True and js["TLS"] is False
    got = {e["export-name"]: e for e in js["exports"]}
    assert set(got) == set(all_luns), (set(got), set(all_luns))      # every LUN, nothing else
    for name, (size, raid) in want.items():
        e = got[name]
        assert e["export-size"] == size
        assert e["description"] == f"{units[size]} RAID{raid}"
        assert e["contexts"] == ["base:allocation"]
        assert e["is_read_only"] is False
        assert e["block_size_minimum"] == 1 and e["block_size_maximum"] >= 32 * MiB
    for name, info in all_luns.items():
        assert got[name]["export-size"] == info["size"] and f"RAID{info['raid']}" in got[name]["description"]

    text = run(["nbdinfo", "--list", list_uri(daemon, transport)]).stdout
    for name, (size, raid) in want.items():
        block = text.split(f'export="{name}":', 1)[1].split("export=", 1)[0]
        assert f"description: {units[size]} RAID{raid}" in block, block
        assert f"export-size: {size} " in block, block

    # read-only shows in the listing (unix only: over TCP libnbd 1.14 corks its
    # LIST_META_CONTEXT for 200 ms with MSG_MORE, once per export)
    if transport == "unix":
        ro = f"ls-{transport}-a"
        daemon.ctl("lun.set", name=ro, read_only=True)
        try:
            js = json.loads(run(["nbdinfo", "--list", "--json", list_uri(daemon, transport)]).stdout)
            flags = {e["export-name"]: e["is_read_only"] for e in js["exports"]}
            assert flags[ro] is True and flags[f"ls-{transport}-b"] is False
        finally:
            daemon.ctl("lun.set", name=ro, read_only=False)

    healthy(daemon)


CAN_TRUE = ["connect", "read", "write", "flush", "fua", "trim", "zero", "fast-zero", "df",
            "multi-conn", "cache", "structured-reply"]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_can_flags(daemon, transport):
    need("nbdinfo")
    name = make_lun(daemon, f"can-{transport}", 64 * MiB, 1)
    uri = daemon.uri(name, tcp=transport == "tcp")
    for cap in CAN_TRUE:
        r = run(["nbdinfo", "--can", cap, uri], check=False)
        assert r.returncode == 0, f"--can {cap}: exit {r.returncode} {r.stderr}"
    for prop in ("read-only", "rotational"):
        r = run(["nbdinfo", "--is", prop, uri], check=False)
        assert r.returncode == 2, f"--is {prop}: exit {r.returncode} {r.stderr}"

    daemon.ctl("lun.set", name=name, read_only=True)
    try:
        assert run(["nbdinfo", "--is", "read-only", uri], check=False).returncode == 0
        r = run(["nbdinfo", "--can", "write", uri], check=False)
        assert r.returncode == 2, r
        # reads and the non-writing capabilities stay
        for cap in ("connect", "read", "flush", "df", "multi-conn"):
            assert run(["nbdinfo", "--can", cap, uri], check=False).returncode == 0, cap
    finally:
        daemon.ctl("lun.set", name=name, read_only=False)
    assert run(["nbdinfo", "--can", "write", uri], check=False).returncode == 0
    healthy(daemon)


def test_map_after_writes_zeroes_and_trims(daemon):
    """base:allocation at the pool's 1 MiB segment granularity: written segments are
    data, untouched ones hole+zero; whole-segment trims / zeroes make holes again,
    partial ones keep the segment (and read as zeros); NO_HOLE zeroes are data."""
    need("nbdinfo")
    need_nbdsh()
    size = 32 * MiB
    uri = daemon.uri(make_lun(daemon, "map", size, 5))
    assert nbdinfo_map(uri) == [(0, size, HOLE | ZERO)]

    nbdsh(uri, f"""
        import random
        r = random.Random(5)
        h.pwrite(r.randbytes(4096), {MiB} + 100)             # inside segment 1
        h.pwrite(r.randbytes({3 * MiB}), {8 * MiB})          # segments 8-10
        h.pwrite(r.randbytes(5000), {16 * MiB} - 2500)       # straddles segments 15/16
        h.pwrite(b"\\x01", {size} - 1)                       # the last byte
        h.flush()
    """)
    D, Z = 0, HOLE | ZERO

    def segs(spec):
        return merged([(s * MiB, MiB, spec.get(s, Z)) for s in range(size // MiB)])

    data = {1: D, 8: D, 9: D, 10: D, 15: D, 16: D, 31: D}
    assert nbdinfo_map(uri) == segs(data)

    # trim one whole segment and part of another; zero a whole segment with and without NO_HOLE
    nbdsh(uri, f"""
        h.trim({MiB}, {9 * MiB})                     # whole segment 9 -> hole
        h.trim(4096, {15 * MiB} + 100)               # part of segment 15 -> still data
        h.zero({MiB}, {20 * MiB}, nbd.CMD_FLAG_NO_HOLE)   # provisioned zeroes -> data
        h.zero({MiB}, {31 * MiB})                    # may punch -> hole
        h.flush()
        assert h.pread({MiB}, {9 * MiB}) == bytes({MiB})
        assert h.pread(4096, {15 * MiB} + 100) == bytes(4096)
        assert h.pread({MiB}, {20 * MiB}) == bytes({MiB})
        assert h.pread({MiB}, {31 * MiB}) == bytes({MiB})
    """)
    data.pop(9), data.pop(31)
    data[20] = D
    assert nbdinfo_map(uri) == segs(data)

    # --totals agrees with the map
    tot = json.loads(run(["nbdinfo", "--map", "--totals", "--json", uri]).stdout)
    by_type = {t["type"]: t["size"] for t in tot}
    assert by_type.get(0) == sum(1 for v in data.values() if v == D) * MiB, tot
    assert sum(by_type.values()) == size
    healthy(daemon)


# ---- nbdcopy -------------------------------------------------------------------------------------
def make_image(path, size: int, seed: int) -> bool:
    """A random image with sparse holes: two whole MiB ranges and one 300 KiB
    range inside a segment, so nbdcopy sends zero requests too. False if the file
    system cannot punch holes (the ranges are then written as zeros)."""
    r = random.Random(seed)
    with open(path, "wb") as f:
        for off in range(0, size, 4 * MiB):
            f.write(r.randbytes(4 * MiB))
    fd, sparse = os.open(path, os.O_RDWR), True
    try:
        for off, n in ((10 * MiB, 5 * MiB), (40 * MiB + 12345, 300 << 10), (size - 2 * MiB, 2 * MiB)):
            try:
                _punch(fd, off, n)
            except OSError:             # no hole punching here: plain zeros still test zeroing
                os.pwrite(fd, bytes(n), off)
                sparse = False
    finally:
        os.close(fd)
    return sparse


def _punch(fd: int, off: int, n: int) -> None:
    """FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE through libc (no Python wrapper)."""
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if libc.fallocate(fd, 0x02 | 0x01, off, n) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    src = d / "src.img"
    sparse = make_image(src, 64 * MiB, 64)
    junk = d / "junk.img"
    with open(junk, "wb") as f:
        f.write(b"\xee" * (64 * MiB))
    return src, junk, sha256_file(src), sparse


COPY_MODES = {"1conn": ["--connections=1"], "4conns": ["--connections=4"],
              "4conns-32M": ["--connections=4", "--request-size=33554432", "--requests=4"]}


@pytest.mark.parametrize("raid", [0, 1, 5])
@pytest.mark.parametrize("mode", list(COPY_MODES))
def test_nbdcopy_round_trip(daemon, images, tmp_path, raid, mode):
    """file -> LUN -> file, byte-exact, with one connection, four (multi-conn) and
    four with 32 MiB requests (the advertised maximum). The LUN is filled with 0xee
    first, so the source's holes must really be zeroed (NBD-NOTES G-7)."""
    need("nbdcopy")
    src, junk, digest, sparse = images
    name = make_lun(daemon, f"copy-r{raid}-{mode}", 64 * MiB, raid)
    uri = daemon.uri(name)
    conn = COPY_MODES[mode]
    run(["nbdcopy", *conn, str(junk), uri])
    run(["nbdcopy", *conn, "--flush", str(src), uri])
    out = tmp_path / "out.img"
    run(["nbdcopy", *conn, uri, str(out)])
    assert sha256_file(out) == digest
    # LUN -> another (junk-filled) LUN on the same daemon, read back over TCP
    other = make_lun(daemon, f"copy2-r{raid}-{mode}", 64 * MiB, raid)
    run(["nbdcopy", *conn, str(junk), daemon.uri(other)])
    run(["nbdcopy", *conn, "--flush", uri, daemon.uri(other)])
    r = subprocess.run(["nbdcopy", daemon.uri(other, tcp=True), "-"], capture_output=True, timeout=120)
    assert r.returncode == 0 and hashlib.sha256(r.stdout).hexdigest() == digest, r.stderr
    # the whole-MiB holes of the source are holes on the LUN too
    if sparse and shutil.which("nbdinfo"):
        m = nbdinfo_map(uri)
        holes = [(o, n) for o, n, t in m if t & HOLE]
        assert (10 * MiB, 5 * MiB) in holes and (62 * MiB, 2 * MiB) in holes, m
    healthy(daemon)


# ---- nbdsh: option-level checks ------------------------------------------------------------------
OPTION_SCRIPT = r"""
import random
MiB = 1 << 20
R = 16 * MiB                      # the region this script models byte for byte
rnd = random.Random(SEED)
mirror = bytearray(R)

assert h.get_size() == SIZE, h.get_size()
assert h.get_protocol() == "newstyle-fixed"
assert h.get_structured_replies_negotiated()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
assert h.can_multi_conn() and h.can_flush() and h.can_fua() and h.can_df()
assert h.can_trim() and h.can_zero() and h.can_fast_zero() and h.can_cache()
assert not h.is_read_only()

def w(off, data, flags=0):
    h.pwrite(data, off, flags)
    mirror[off:off + len(data)] = data

def status(off, n, flags=0):
    got = []
    def cb(ctx, o, ents, err):
        got.append((ctx, o, list(ents)))
        return 0
    h.block_status(n, off, cb, flags)
    assert len(got) == 1, got                      # one chunk per selected context
    ctx, o, ents = got[0]
    assert ctx == nbd.CONTEXT_BASE_ALLOCATION and o == off, got
    pairs = list(zip(ents[0::2], ents[1::2]))
    assert pairs and all(n > 0 for n, _ in pairs), pairs
    assert sum(n for n, _ in pairs[:-1]) < n       # proto.md: only the last may overrun
    runs, pos = [], off
    for length, f in pairs:                        # clip to the request, merge equal runs
        end = min(pos + length, off + n)
        if runs and runs[-1][2] == f:
            runs[-1][1] = end
        else:
            runs.append([pos, end, f])
        pos = end
        if pos >= off + n:
            break
    return [tuple(x) for x in runs]

def check_status_vs_data(off, n):
    for s, e, f in status(off, n):
        if f & 2:                                   # NBD_STATE_ZERO must mean zeros
            assert h.pread(e - s, s) == bytes(e - s), (s, e, f)

def sread(off, n, flags=0):
    chunks = []
    def cb(buf, o, st, err):
        chunks.append((o, len(buf), st))
        return 0
    buf = h.pread_structured(n, off, cb, flags)
    return bytes(buf), sorted(chunks)

HZ = 3
# fresh LUN: one hole
assert status(0, R) == [(0, R, HZ)], status(0, R)
assert sread(0, 3 * MiB, nbd.CMD_FLAG_DF) == (bytes(3 * MiB), [(0, 3 * MiB, nbd.READ_DATA)])

# writes: straddling segments 0/1, an unaligned FUA write into segment 5
w(MiB - 1000, rnd.randbytes(70000))
w(5 * MiB + 3, rnd.randbytes(4097), nbd.CMD_FLAG_FUA)
assert status(0, R) == [(0, 2 * MiB, 0), (2 * MiB, 5 * MiB, HZ), (5 * MiB, 6 * MiB, 0), (6 * MiB, R, HZ)], status(0, R)

# a DF read: exactly one data chunk for the whole range, holes as explicit zeros
buf, chunks = sread(0, 8 * MiB, nbd.CMD_FLAG_DF)
assert chunks == [(0, 8 * MiB, nbd.READ_DATA)], chunks
assert buf == mirror[:8 * MiB]
buf, chunks = sread(MiB - 1000, 65536, nbd.CMD_FLAG_DF)
assert chunks == [(MiB - 1000, 65536, nbd.READ_DATA)] and buf == mirror[MiB - 1000: MiB - 1000 + 65536]

# a plain structured read: chunks tile the range exactly, holes as hole chunks
buf, chunks = sread(0, 8 * MiB)
assert buf == mirror[:8 * MiB]
pos = 0
for o, n, st in chunks:
    assert o == pos, chunks
    pos += n
assert pos == 8 * MiB, chunks
D, H = nbd.READ_DATA, nbd.READ_HOLE
assert chunks == [(0, 2 * MiB, D), (2 * MiB, 3 * MiB, H), (5 * MiB, MiB, D), (6 * MiB, 2 * MiB, H)], chunks

# odd reads
for off, n in ((0, 1), (MiB - 1001, 3), (5 * MiB, 4100), (R - 7, 7), (MiB + 68999, 2)):
    assert h.pread(n, off) == mirror[off:off + n], (off, n)

# REQ_ONE: exactly one extent, no longer than asked
got = []
h.block_status(R, 0, lambda c, o, e, err: got.append(list(e)) or 0, nbd.CMD_FLAG_REQ_ONE)
assert len(got) == 1 and len(got[0]) == 2 and 0 < got[0][0] <= R and got[0][1] == 0, got
got.clear()
h.block_status(MiB, 3 * MiB, lambda c, o, e, err: got.append(list(e)) or 0, nbd.CMD_FLAG_REQ_ONE)
assert got == [[MiB, HZ]], got

# WRITE_ZEROES with NO_HOLE: provisioned, so block status says data; reads zero
h.zero(2 * MiB, 8 * MiB, nbd.CMD_FLAG_NO_HOLE)
assert status(8 * MiB, 2 * MiB) == [(8 * MiB, 10 * MiB, 0)], status(8 * MiB, 2 * MiB)
assert h.pread(2 * MiB, 8 * MiB) == bytes(2 * MiB)
# ... and without it: the whole segments become a hole again
h.zero(2 * MiB, 8 * MiB)
assert status(8 * MiB, 2 * MiB) == [(8 * MiB, 10 * MiB, HZ)], status(8 * MiB, 2 * MiB)
assert h.pread(2 * MiB, 8 * MiB) == bytes(2 * MiB)
# a partial zero inside written data: data stays mapped, the bytes are zero
h.zero(60000, MiB - 500)
mirror[MiB - 500: MiB - 500 + 60000] = bytes(60000)
assert status(0, 2 * MiB) == [(0, 2 * MiB, 0)]
# whole-segment zero over data (may punch): hole
w(12 * MiB, rnd.randbytes(2 * MiB))
h.zero(MiB, 12 * MiB, nbd.CMD_FLAG_FUA)
mirror[12 * MiB:13 * MiB] = bytes(MiB)
assert status(12 * MiB, 2 * MiB) == [(12 * MiB, 13 * MiB, HZ), (13 * MiB, 14 * MiB, 0)]
# FAST_ZERO: succeeds (and zeroes) or fails fast with ENOTSUP leaving the data alone
try:
    h.zero(MiB, 13 * MiB, nbd.CMD_FLAG_FAST_ZERO)
    mirror[13 * MiB:14 * MiB] = bytes(MiB)
except nbd.Error as e:
    assert e.errno == "ENOTSUP", e
# TRIM: a whole segment and a partial range
w(14 * MiB, rnd.randbytes(2 * MiB))
h.trim(MiB, 14 * MiB)
h.trim(1000, 15 * MiB + 10)
mirror[14 * MiB:15 * MiB] = bytes(MiB)
mirror[15 * MiB + 10:15 * MiB + 1010] = bytes(1000)
h.cache(4 * MiB, 0)
h.flush()
check_status_vs_data(0, R)
whole = h.pread(R, 0)
assert whole == mirror, [i for i in range(0, R, 4096) if whole[i:i + 4096] != mirror[i:i + 4096]][:10]
# beyond the modelled region nothing was touched
assert status(R, SIZE - R) == [(R, SIZE, HZ)]
# server errors keep the connection usable (strict mode off: the request is sent)
h.set_strict_mode(0)
try:
    h.pread(4096, SIZE - 100)
except nbd.Error as e:
    assert e.errno == "EINVAL" and "command failed" in str(e), e
else:
    raise AssertionError("read past the end succeeded")
assert h.pread(100, 5 * MiB) == mirror[5 * MiB:5 * MiB + 100]
print("OK", flush=True)
"""


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_nbdsh_option_level(daemon, transport):
    need_nbdsh()
    size = 64 * MiB
    name = make_lun(daemon, f"sh-{transport}", size, 5)
    script = OPTION_SCRIPT.replace("SEED", "11").replace("SIZE", str(size))
    r = nbdsh(daemon.uri(name, tcp=transport == "tcp"), script, "--base-allocation")
    assert r.stdout.split() == ["OK"], r.stdout
    healthy(daemon)


def test_nbdsh_without_meta_context_has_no_block_status(daemon):
    """No base:allocation requested: can_meta_context is false, and a BLOCK_STATUS
    sent anyway (strict mode off) gets EINVAL from the server; reads still work."""
    need_nbdsh()
    name = make_lun(daemon, "sh-nometa", 64 * MiB, 0)
    r = nbdsh(daemon.uri(name), """
        assert h.get_structured_replies_negotiated()
        assert not h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.pwrite(b"x" * 10, 5)
        h.set_strict_mode(0)
        try:
            h.block_status(4096, 0, lambda *a: 0)
        except nbd.Error as e:
            assert e.errno == "EINVAL" and "command failed" in str(e), e
        else:
            raise AssertionError("block status without a meta context succeeded")
        assert h.pread(20, 0) == bytes(5) + b"x" * 10 + bytes(5)
        print("OK")
    """)
    assert r.stdout.split() == ["OK"]


MULTICONN_SCRIPT = r"""
import hashlib, os, random
A = h
B = nbd.NBD(); B.connect_uri(URI_B)
C = nbd.NBD(); C.connect_uri(URI_C)
for x in (A, B, C):
    assert x.can_multi_conn()
rnd = random.Random(SEED)
big = rnd.randbytes(3 * 1024 * 1024 + 123)
small = rnd.randbytes(777)
if PHASE == 1:
    A.pwrite(big, 5 * 1024 * 1024 - 61)
    A.pwrite(small, 40 * 1024 * 1024 + 1)
    B.flush()                         # makes A's replied writes durable and visible
    assert C.pread(len(big), 5 * 1024 * 1024 - 61) == big
    assert C.pread(len(small), 40 * 1024 * 1024 + 1) == small
elif PHASE == 2:
    C.pwrite(big, 50 * 1024 * 1024 + 3, nbd.CMD_FLAG_FUA)     # FUA on the writer, no FLUSH
    C.pwrite(small, 60 * 1024 * 1024 - 5, nbd.CMD_FLAG_FUA)
    assert A.pread(len(big), 50 * 1024 * 1024 + 3) == big
    assert A.pread(len(small), 60 * 1024 * 1024 - 5) == small
else:
    C.pwrite(big, 20 * 1024 * 1024 + 3)                       # plain writes on C ...
    C.pwrite(small, 30 * 1024 * 1024 - 5)
    B.flush()                                                 # ... made durable by B
    assert A.pread(len(big), 20 * 1024 * 1024 + 3) == big
    assert A.pread(len(small), 30 * 1024 * 1024 - 5) == small
print(hashlib.sha256(big + small).hexdigest(), flush=True)
os._exit(0)                           # no DISC: a commit on close cannot hide a missing flush
"""

READBACK_SCRIPT = r"""
import hashlib
if PHASE == 1:
    got = h.pread(3 * 1024 * 1024 + 123, 5 * 1024 * 1024 - 61) + h.pread(777, 40 * 1024 * 1024 + 1)
elif PHASE == 2:
    got = h.pread(3 * 1024 * 1024 + 123, 50 * 1024 * 1024 + 3) + h.pread(777, 60 * 1024 * 1024 - 5)
else:
    got = h.pread(3 * 1024 * 1024 + 123, 20 * 1024 * 1024 + 3) + h.pread(777, 30 * 1024 * 1024 - 5)
print(hashlib.sha256(got).hexdigest())
"""


@pytest.mark.parametrize("mix", ["unix", "unix+tcp"])
def test_multi_conn_flush_durable_across_connections(fresh_daemon, mix):
    """Phase 1: writes on A, FLUSH on B, read on C. Phase 2: FUA writes on C, read
    on A. Phase 3: writes on C, FLUSH on B, read on A. After each phase the daemon is SIGKILLed
    (no clean close can commit anything) and restarted, and a new connection must
    read the same bytes (NBD-NOTES §1.11)."""
    need_nbdsh()
    d = fresh_daemon
    name = make_lun(d, "mc", 64 * MiB, 5)
    uri_b = d.uri(name, tcp=mix == "unix+tcp")
    for phase in (1, 2, 3):
        script = (MULTICONN_SCRIPT.replace("URI_B", repr(uri_b)).replace("URI_C", repr(d.uri(name)))
                  .replace("SEED", str(phase)).replace("PHASE", str(phase)))
        digest = nbdsh(d.uri(name), script).stdout.strip()
        assert len(digest) == 64
        d.stop(signal.SIGKILL)
        d.start()
        r = nbdsh(d.uri(name, tcp=True), READBACK_SCRIPT.replace("PHASE", str(phase)))
        assert r.stdout.strip() == digest, f"phase {phase}: data replied to before a FLUSH/FUA was lost"
    healthy(d)


def data_extents(path) -> list[tuple[int, int]]:
    """[(start, end)] of a file's data (SEEK_DATA / SEEK_HOLE)."""
    out = []
    with open(path, "rb") as f:
        fd, end, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, pos))
    return out


def sparse_equal(a, b) -> bool:
    """Byte equality of two sparse files of the same size, reading only where
    either has data (both read as zeros everywhere else)."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for s, e in data_extents(a) + data_extents(b):
            for off in range(s, e, 4 * MiB):
                n = min(4 * MiB, e - off)
                if os.pread(fa.fileno(), n, off) != os.pread(fb.fileno(), n, off):
                    return False
    return True


# ---- kernel-sized ranges ----------------------------------------------------------------------
BIG_SCRIPT = r"""
G, M = 1 << 30, 1 << 20
SIZE = h.get_size()
spots = (0, 5 * M + 3, G - 7, 2 * G, 4 * G - 512, 4 * G + 100, 6 * G, SIZE - 4096)
for off in spots:
    h.pwrite(b"\xee" * 4096, off)
h.trim(0xFFFFFE00, 0)                          # the kernel's largest discard: 4 GiB - 512
h.zero(0xFFFFFFFF, 0xFFFFFE00)                 # the largest 32-bit effect length
rest = SIZE - 0xFFFFFE00 - 0xFFFFFFFF
h.zero(rest, SIZE - rest, nbd.CMD_FLAG_FUA)
for off in spots:
    assert h.pread(4096, off) == bytes(4096), off
ents = []
h.block_status(0xFFFFFFFF, 0, lambda c, o, e, err: ents.append(list(e)) or 0)
# everything but the segment holding 4 GiB - 512 (partly trimmed, partly zeroed in place)
assert ents == [[4 * G - M, 3, M - 1, 0]], ents
# NO_HOLE over 4 GiB - 4 KiB: fully provisioned, still zeros
h.zero(0xFFFFF000, 4 * G, nbd.CMD_FLAG_NO_HOLE)
ents.clear()
h.block_status(0xFFFFF000, 4 * G, lambda c, o, e, err: ents.append(list(e)) or 0)
assert ents == [[0xFFFFF000, 0]], ents
assert h.pread(M, 5 * G + 17) == bytes(M)
h.flush()
print("OK")
"""


def test_kernel_sized_trim_and_zero(daemon):
    """TRIM of 4 GiB - 512 (what nbd.ko sends for a whole-disk discard) and
    WRITE_ZEROES of 0xffffffff bytes are unsigned 32-bit lengths handled whole
    (NBD-NOTES G-5, G-6, G-7)."""
    need_nbdsh()
    name = make_lun(daemon, "bigrange", 8 << 30, 5)
    r = nbdsh(daemon.uri(name), BIG_SCRIPT, "--base-allocation")
    assert r.stdout.split() == ["OK"], r.stdout
    assert daemon.ctl("lun.show", name=name)["allocated"] == (4 << 30) + MiB
    healthy(daemon)


def test_nbdcopy_sparse_into_big_junk_lun(daemon, tmp_path):
    """nbdcopy turns the holes of a 3 GiB sparse image into large zero requests;
    junk scattered over the LUN must be gone afterwards (G-6/G-7 at scale)."""
    need("nbdcopy", "nbdinfo", "qemu-io")
    size = 3 << 30
    name = make_lun(daemon, "bigcopy", size, 1)
    uri = daemon.uri(name)
    junk = []
    for off in range(0, size, 96 * MiB):
        junk += ["-c", f"write -P 0xee {off + 12345} 70000"]
    run(["qemu-io", "-f", "raw", *junk, uri])
    src = tmp_path / "src.img"
    r = random.Random(9)
    data_at = (0, 700 * MiB + 5, (2 << 30) + 3, size - MiB)
    with open(src, "wb") as f:
        f.truncate(size)
        for off in data_at:
            f.seek(off)
            f.write(r.randbytes(MiB))
    run(["nbdcopy", "--flush", str(src), uri])
    out = tmp_path / "out.img"
    run(["nbdcopy", "--connections=4", uri, str(out)])
    assert sparse_equal(src, out)
    data = [(o, n) for o, n, t in nbdinfo_map(uri) if not t & HOLE]
    assert data == [(0, MiB), (700 * MiB, 2 * MiB), (2 << 30, 2 * MiB), (size - MiB, MiB)], data
    assert daemon.ctl("lun.show", name=name)["allocated"] == 6 * MiB
    healthy(daemon)


def test_default_export_is_the_only_lun(fresh_daemon):
    """With exactly one LUN the empty export name reaches it (nbdinfo, nbdsh with
    base:allocation, qemu's default); with two it is an unknown export."""
    need("nbdinfo")
    need_nbdsh()
    d = fresh_daemon
    make_lun(d, "only", 64 * MiB, 5)
    for uri in (f"nbd+unix:///?socket={d.sock}", f"nbd://127.0.0.1:{d.port}"):
        js = json.loads(run(["nbdinfo", "--json", uri]).stdout)
        assert [(e["export-name"], e["export-size"]) for e in js["exports"]] == [("only", 64 * MiB)]
        r = nbdsh(uri, """
            h.pwrite(b"\\x07" * 4096, 8192)
            got = []
            h.block_status(2 << 20, 0, lambda c, o, e, err: got.append(list(e)) or 0)
            assert got == [[1 << 20, 0, 1 << 20, 3]], got
            print("OK")
        """, "--base-allocation")
        assert r.stdout.split() == ["OK"]
    make_lun(d, "second", 64 * MiB, 5)
    r = run(["nbdinfo", f"nbd+unix:///?socket={d.sock}"], check=False)
    assert r.returncode != 0 and "default export" in r.stderr, r
    healthy(d)
