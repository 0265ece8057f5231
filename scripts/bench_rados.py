"""Latency and throughput of the plugins/rados binding against a running cluster.

    python scripts/bench_rados.py CEPH_CONF [POOL]     (e.g. a cluster from scripts/rados_up.sh)

Writes at most 32 MiB (2 MiB PSEG objects, overwritten in place) in its own namespace and
removes it at the end.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugins.rados import Cluster, aio_read, aio_write  # noqa: E402

PSEG = 2 << 20
OBJS = 16


def lat(fn, n: int) -> str:
    t = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        t.append(time.perf_counter() - t0)
    t.sort()
    return (f"{n / sum(t):7.0f} IOPS  p50 {statistics.median(t) * 1e3:.2f} ms  "
            f"p99 {t[int(n * .99)] * 1e3:.2f} ms")


async def aio(io, depth: int, n: int, size: int, write: bool) -> float:
    data = os.urandom(size)
    sem = asyncio.Semaphore(depth)

    async def one(i: int):
        async with sem:
            oid, off = f"pseg.{i % OBJS}", (i // OBJS * size) % PSEG
            if write:
                await aio_write(io, oid, data, off)
            else:
                await aio_read(io, oid, size, off)
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0


def main() -> None:
    conf, pool = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "psegs"
    t0 = time.perf_counter()
    c = Cluster(conf, timeout=30)
    io = c.open_ioctx(pool, f"bench-{uuid.uuid4().hex[:8]}")
    print(f"connect + ioctx: {(time.perf_counter() - t0) * 1e3:.1f} ms")
    block = os.urandom(4096)
    for i in range(OBJS):
        io.write_full(f"pseg.{i}", bytes(PSEG))
    print("QD1 4K write in a PSEG:", lat(lambda i: io.write(f"pseg.{i % OBJS}", block, (i * 4096) % PSEG), 1000))
    print("QD1 4K read in a PSEG: ", lat(lambda i: io.read(f"pseg.{i % OBJS}", 4096, (i * 4096) % PSEG), 1000))
    print("QD1 4K read, missing:  ", lat(lambda i: io.read(f"none.{i}", 4096, 0), 1000))
    for depth in (16, 64):
        for write in (True, False):
            s = asyncio.run(aio(io, depth, 4000, 4096, write))
            print(f"aio QD{depth} 4K {'write' if write else 'read '}: {4000 / s:7.0f} IOPS")
    for write in (True, False):
        s = asyncio.run(aio(io, 16, 128, PSEG, write))
        print(f"aio QD16 2 MiB {'write' if write else 'read '}: {128 * PSEG / s / 1e6:6.0f} MB/s")
    for i in range(OBJS):
        io.remove(f"pseg.{i}")
    io.close()
    c.shutdown()


if __name__ == "__main__":
    main()
