"""The block status contexts an export offers, and what each reports.

``base:allocation`` (NBD's own): HOLE|ZERO where nothing is allocated.

``vsand:changed:<LD>`` on export NEWER, for each other LD of NEWER's sharing
chain: flag bit 0 (``STATE_CHANGED``) set where NEWER may differ from that LD,
clear where both read the same bytes (a safe superset, from the maps: see
disk/diff.py); no other bit is ever set. The sense is the one of qemu's
``qemu:dirty-bitmap:<name>`` (bit 0 = dirty), so qemu's ``x-dirty-bitmap``
option works with it as with qemu-nbd's bitmaps: qemu feeds the context's flags
to its base:allocation code (block/nbd.c: bit 0 set -> not DATA, bit 1 set ->
ZERO), so ``qemu-img map --output=json`` shows changed extents as
``"data": false`` and unchanged ones as ``"data": true``; a bit 1 would make qemu
take changed extents for zeros, hence it stays clear.

A context selected at the handshake is bound to its LDs then (an LD deleted
later is refused at each request with EINVAL, the connection stays).
"""

from __future__ import annotations

from collections.abc import Callable

from ..nbd import constants as C
from ..nbd import wire

CHANGED = "vsand:changed:"
STATE_CHANGED = 1 << 0

Status = Callable[[int, int], list[tuple[int, int]]]   # (offset, length) -> [(length, flags)]


class Unavailable(Exception):
    """A selected context that can no longer be reported (EINVAL, with the reason)."""

    errno = C.EINVAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def offered(exports, name: str) -> list[str]:
    """Context names beyond base:allocation that export ``name`` offers."""
    return [CHANGED + peer for peer in exports.peers(name)]


def subject(ctx: str) -> str | None:
    """The LD a ``vsand:changed:`` context names; None for another context."""
    return ctx[len(CHANGED):] if ctx.startswith(CHANGED) else None


def status(exports, name: str, dev, ctx: str) -> Status:
    """What BLOCK_STATUS answers for context ``ctx`` (selected at the handshake)
    on export ``name`` served by ``dev``."""
    if ctx == C.BASE_ALLOCATION:
        return lambda off, n: [(m, 0 if alloc else C.STATE_HOLE | C.STATE_ZERO)
                               for m, alloc in dev.extents(off, n)]
    assert ctx.startswith(CHANGED), ctx
    try:
        changes = exports.changes(name, ctx[len(CHANGED):])
    except Exception as e:      # gone between SET and GO: each request says why
        why = getattr(e, "message", str(e))

        def refused(off, n):
            raise Unavailable(why)
        return refused
    return lambda off, n: [(m, STATE_CHANGED if changed else 0) for m, changed in changes.extents(off, n)]


def reply(statuses: list[tuple[int, Status]], flags: int, cookie: int, off: int, length: int) -> bytes:
    """A BLOCK_STATUS reply: one chunk per selected context (``statuses``: (context
    id, Status), by id), all built before any is sent: a context that fails makes
    the whole request an error."""
    chunks = []
    for cid, status in statuses:
        extents = status(off, max(length, 1))
        if flags & C.CMD_FLAG_REQ_ONE:
            n, f = extents[0]
            extents = [(min(n, length) or 1, f)]
        chunks.append((cid, extents))
    return b"".join(wire.block_status_chunk(cookie, cid, extents, i == len(chunks) - 1)
                    for i, (cid, extents) in enumerate(chunks))
