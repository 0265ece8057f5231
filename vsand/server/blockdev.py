"""The only face of storage the server sees (DESIGN.md §3)."""

from __future__ import annotations

from typing import Protocol


class BlockDevice(Protocol):
    size: int
    read_only: bool

    def read(self, off: int, n: int) -> bytes: ...
    def write(self, off: int, data) -> None: ...
    def trim(self, off: int, n: int) -> None: ...
    def write_zeroes(self, off: int, n: int, may_trim: bool = True) -> None: ...
    def extents(self, off: int, n: int) -> list[tuple[int, bool]]:
        """[(length, allocated)] covering exactly [off, off+n)."""
        ...

    def read_job(self, off: int, n: int):
        """The read resolved now, its drive I/O to run later (``try_now()`` on the
        loop without blocking, else ``run()`` in a worker thread; ``buf``, ``holes``;
        ``done()`` once, always), or None when only ``read`` can do it."""
        ...

    def read_sparse(self, off: int, n: int) -> list[tuple[int, int, bytes | None]]:
        """[(offset, length, data or None where the range reads as zeros)]."""
        ...


class Exports(Protocol):
    def lookup(self, name: str):
        """(nbd.handshake.Export, BlockDevice) or None."""
        ...

    def listing(self) -> list: ...

    def flush(self) -> None:
        """Makes every write already answered, on every device, durable."""
        ...
