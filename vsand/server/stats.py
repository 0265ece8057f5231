"""Per-export request counters the NBD connections keep, read at scrape time.

The request path pays for a few list increments and one ``bisect`` per reply:
plain ints in lists indexed by the NBD command number, and latency counts in a
fixed set of buckets. Nothing here knows of Prometheus; vsand/web/metrics.py
turns these figures into metric families when it is scraped.
"""

from __future__ import annotations

from bisect import bisect_left

from ..nbd import constants as C

# the commands counted, by their NBD number (DISC gets no reply and is not counted)
OPS = {C.CMD_READ: "read", C.CMD_WRITE: "write", C.CMD_FLUSH: "flush", C.CMD_TRIM: "trim",
       C.CMD_CACHE: "cache", C.CMD_WRITE_ZEROES: "write_zeroes", C.CMD_BLOCK_STATUS: "block_status"}
NCMD = max(OPS) + 1

# upper bounds (seconds) of the latency buckets; the last bucket is +Inf
BOUNDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Latency:
    """A histogram with fixed buckets: counts per bucket (not cumulative) and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self):
        self.counts = [0] * (len(BOUNDS) + 1)
        self.sum = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect_left(BOUNDS, seconds)] += 1     # bucket i: seconds <= BOUNDS[i]
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, count of samples <= it), +Inf last."""
        out, total = [], 0
        for bound, n in zip((*map(repr, BOUNDS), "+Inf"), self.counts):
            total += n
            out.append((bound, total))
        return out


class ExportStats:
    """What the connections to one export did: requests and bytes by command,
    reply latency by command, error replies by NBD error number, connections."""

    __slots__ = ("ops", "bytes", "latency", "errors", "connections")

    def __init__(self):
        self.ops = [0] * NCMD
        self.bytes = [0] * NCMD
        self.latency = [Latency() for _ in range(NCMD)]
        self.errors: dict[int, int] = {}
        self.connections = 0        # connections that reached transmission, ever

    def took(self, cmd: int, seconds: float) -> None:
        """A reply to a ``cmd`` request went out ``seconds`` after it was handled."""
        self.latency[cmd].add(seconds)

    def error(self, err: int) -> None:
        self.errors[err] = self.errors.get(err, 0) + 1


class Stats:
    """Every export's ExportStats by name (a renamed export keeps its figures;
    a deleted one's are dropped)."""

    def __init__(self):
        self.exports: dict[str, ExportStats] = {}
        self.refused = 0            # connections refused as they came (nbd_allow, max_connections)

    def export(self, name: str) -> ExportStats:
        st = self.exports.get(name)
        if st is None:
            st = self.exports[name] = ExportStats()
        return st

    def rename(self, old: str, new: str) -> None:
        st = self.exports.pop(old, None)
        if st is not None:
            self.exports[new] = st

    def forget(self, name: str) -> None:
        self.exports.pop(name, None)
