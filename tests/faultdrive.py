"""A Drive whose calls fail on demand, for fault tests (DESIGN.md §9, §12; like nbdkit's
error filter, in-process).

All drives opened through one ``Faults`` share its rules. A rule names a call
(``pwrite``, ``fsync``, ``pread``, ``zero``), optionally a drive path, a byte region of
the drive and the n-th matching call; when it fires the call either fails with
``IOFailure`` (EIO, nothing written) or, for ``tear``, writes only the first ``keep``
bytes of a pwrite and then raises ``PowerCut``: the machine stopped in the middle of
that write. Every call is counted in ``calls`` so a test can first learn how many
calls of a kind an operation makes, then fail each one in turn.
"""

from __future__ import annotations

from dataclasses import dataclass

from vsand.errors import IOFailure
from vsand.physical.drive import Drive


class PowerCut(BaseException):
    """The power went out mid-call; the pool object that saw this must be abandoned."""


@dataclass
class Rule:
    call: str
    path: str | None = None
    lo: int = 0
    hi: int = 1 << 62
    nth: int = 1
    action: str = "eio"        # "eio", "tear" (a prefix reaches the drive) or "tear_tail" (the rest does)
    keep: int = 0              # tear: bytes of the pwrite that reach the drive
    seen: int = 0
    fired: bool = False


class Faults:
    def __init__(self):
        self.rules: list[Rule] = []
        self.calls: list[tuple[str, str, int, int]] = []   # (call, path, offset, length)
        self.dead = False
        self.record: tuple[int, int] | None = None          # keep the bytes of pwrites in this region
        self.written: list[tuple[str, int, bytes]] = []     # (path, offset, data) of those

    def add(self, call: str, path: str | None = None, region: tuple[int, int] | None = None,
            nth: int = 1, action: str = "eio", keep: int = 0) -> Rule:
        lo, hi = region or (0, 1 << 62)
        r = Rule(call, path, lo, hi, nth, action, keep)
        self.rules.append(r)
        return r

    def clear(self) -> None:
        self.rules.clear()

    def count(self, call: str, path: str | None = None, region: tuple[int, int] | None = None) -> int:
        lo, hi = region or (0, 1 << 62)
        return sum(1 for c, p, off, n in self.calls
                   if c == call and (path is None or p == path) and off < hi and off + max(n, 1) > lo)

    def open(self, path: str, create_size: int | None = None) -> "FaultDrive":
        d = FaultDrive.open(path, create_size)
        d.faults = self
        return d

    def hit(self, call: str, drive: "FaultDrive", off: int, n: int, data=None) -> Rule | None:
        if self.dead:
            raise PowerCut("I/O after the power cut")
        self.calls.append((call, drive.path, off, n))
        if data is not None and self.record and off < self.record[1] and off + n > self.record[0]:
            self.written.append((drive.path, off, bytes(data)))
        for r in self.rules:
            if r.fired or r.call != call or (r.path is not None and r.path != drive.path):
                continue
            if call != "fsync" and not (off < r.hi and off + max(n, 1) > r.lo):
                continue
            r.seen += 1
            if r.seen == r.nth:
                r.fired = True
                return r
        return None


class FaultCalls:
    """The drive calls that consult ``faults`` first; mixed in before a drive class
    (``FaultDrive`` below: a local drive; tests/rados/test_rados_model.py: a RADOS one)."""
    faults: Faults

    def pread(self, off, n):
        if self.faults.hit("pread", self, off, n):
            raise IOFailure(f"read {self.path}@{off}: injected EIO")
        return super().pread(off, n)

    def readinto(self, off, buf):
        if self.faults.hit("pread", self, off, len(buf)):
            raise IOFailure(f"read {self.path}@{off}: injected EIO")
        super().readinto(off, buf)

    def pwrite(self, off, data):
        r = self.faults.hit("pwrite", self, off, len(data), data)
        if r is None:
            return super().pwrite(off, data)
        if r.action in ("tear", "tear_tail"):
            mv = memoryview(data).cast("B")
            if r.action == "tear":
                super().pwrite(off, mv[:r.keep])
            elif r.keep < len(mv):
                super().pwrite(off + r.keep, mv[r.keep:])
            self.faults.dead = True
            raise PowerCut(f"power cut inside a write to {self.path}@{off} ({r.action} at {r.keep})")
        raise IOFailure(f"write {self.path}@{off}: injected EIO")

    def zero(self, off, n):
        if self.faults.hit("zero", self, off, n):
            raise IOFailure(f"punch {self.path}@{off}: injected EIO")
        super().zero(off, n)

    def fsync(self):
        if self.faults.hit("fsync", self, 0, 0):
            raise IOFailure(f"fsync {self.path}: injected EIO")
        super().fsync()


class FaultDrive(FaultCalls, Drive):
    pass


def _check_overrides() -> None:
    """Fails loudly if Drive grows an I/O call this helper does not intercept."""
    io = {n for n in vars(Drive) if not n.startswith("_") and callable(getattr(Drive, n))}
    missing = io - {"open", "pread", "readinto", "pwrite", "zero", "fsync", "close"}
    assert not missing, f"FaultDrive does not intercept Drive.{', Drive.'.join(sorted(missing))}"


_check_overrides()
