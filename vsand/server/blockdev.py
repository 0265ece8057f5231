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

    def read_now(self, off: int, n: int):
        """The bytes, when the page cache held them all (a bytearray, read on the
        loop without blocking); else the read resolved now as a job whose drive
        I/O runs later (``try_now()`` on the loop without blocking, else ``run()``
        in a worker thread or ``start`` on an io_uring; ``buf``, ``holes``;
        ``done()`` once, always; after ``run``, ``buf`` is to be read again with
        ``read`` unless ``intact()``); or None when only ``read`` can do it."""
        ...

    defers_writes: bool
    """``write_job`` may hand back jobs: the data passed must not change until done."""

    def write_job(self, off: int, data):
        """The write of ``data`` at ``off``: done now (None), or its map work done and
        a job handed back whose ``run()`` may block (a worker thread runs it) once
        ``when_ready(start)`` calls ``start``; ``done()`` on the loop, then ``error``
        says how it went."""
        ...

    def read_sparse(self, off: int, n: int) -> list[tuple[int, int, bytes | None]]:
        """[(offset, length, data or None where the range reads as zeros)]."""
        ...


class Exports(Protocol):
    def lookup(self, name: str):
        """(nbd.handshake.Export, BlockDevice) or None."""
        ...

    def listing(self) -> list: ...

    def rules(self, name: str):
        """Export ``name``'s access rules (access.Rules); empty ones for an unknown name."""
        ...

    def peers(self, name: str) -> list[str]:
        """The LDs export ``name`` can be diffed against (the others of its sharing
        chain); [] for an unknown export."""
        ...

    def changes(self, name: str, since: str):
        """An object whose ``extents(off, n)`` is [(length, changed)] covering
        [off, off+n) of export ``name``: True where it may differ from LD ``since``.
        Raises (with an errno) when the two share no data."""
        ...

    def begin_flush(self):
        """Starts making every write already handled, on every device, durable: a
        job whose ``run()`` may block (a worker thread runs it) and whose
        ``finish()``, on the loop, returns the error or None; or None when that is
        done already."""
        ...
