"""The daemon-wide memory budget for READ replies, reads in flight and WRITE pieces.

Each connection bounds itself (server/connection.py), but that alone lets 1000
connections hold 1000 times as much. So every connection may hold ``FLOOR`` bytes
of its own (queued replies, reads in worker threads, a grown receive buffer) and
takes what it needs beyond that from one ``MemoryBudget`` shared by the daemon.
The floor is what keeps clients that never read their replies from starving the
others: once they have spent the budget, everyone else still has a floor, and a
READ that does not fit whole is read and sent in pieces that fit it. A connection
that has no room even for ``MIN_PIECE`` waits, in arrival order, for the budget
to give some back (or for its own replies or reads to drain, which resumes it
anyway). Worst case for N connections: ``total + N * FLOOR`` bytes.
"""

from __future__ import annotations

import asyncio

MIN_PIECE = 64 << 10
# A connection that is not paused holds no replies in its transport (connection.py
# pauses it as soon as the kernel refuses part of one, and the transport resumes it
# once it holds none): with one MIN_PIECE of floor it can always send another piece
# without waiting for a wake-up that would never come. The second lets small READs
# go in batches without looking at the budget.
FLOOR = 2 * MIN_PIECE
DEFAULT = 256 << 20     # the daemon's default budget (config memory_budget)


class MemoryBudget:
    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self._waiters: dict[Share, int] = {}    # in arrival order: bytes each waits for

    def take(self, n: int) -> int:
        """Up to ``n`` bytes, as many as are free, none while others wait (they
        came first, and a trickle of small takes would keep them waiting)."""
        if self._waiters:
            return 0
        got = min(n, self.total - self.used)
        if got <= 0:
            return 0
        self.used += got
        return got

    def give(self, n: int) -> None:
        self.used -= n
        if self._waiters:
            self._wake()

    def wait(self, share: "Share", n: int) -> None:
        """``share.granted(n)`` is called once ``n`` bytes are free for it."""
        self._waiters[share] = min(n, self.total)    # more than the total would wait forever
        self._wake()

    def cancel(self, share: "Share") -> None:
        if self._waiters.pop(share, None) is not None:
            self._wake()      # it may have been the head that the others queued behind

    def waiting(self) -> int:
        return len(self._waiters)

    def _wake(self) -> None:
        while self._waiters:
            share, n = next(iter(self._waiters.items()))
            if self.total - self.used < n:
                return
            del self._waiters[share]
            self.used += n
            share.granted(n)


class Share:
    """One connection's use of the budget. ``held()`` says how many bytes the
    connection holds now; ``resume()`` is called (soon, from the loop, never inside
    another connection's callback) after bytes it waited for were granted.

    ``used`` is what the connection held at the last look plus what it added since
    (an overestimate: the socket takes replies meanwhile); ``limit`` is the floor
    plus the grant. Below it, nothing is looked up, which keeps small READs cheap."""

    __slots__ = ("budget", "held", "resume", "grant", "used", "limit", "waiting")

    def __init__(self, budget: MemoryBudget, held, resume):
        self.budget = budget
        self.held = held
        self.resume = resume
        self.grant = 0
        self.used = 0
        self.limit = FLOOR
        self.waiting = False

    def reserve(self, n: int, instead: int = 0, wait: bool = True) -> int:
        """Room for ``n`` more bytes (``instead`` of that many it holds now): ``n``,
        or fewer but at least MIN_PIECE (the caller works in pieces), or, with
        ``wait``, 0 after queueing for the budget. Without ``wait`` what is left of
        the floor and the grant, maybe 0. The caller adds what it allocates to
        ``used``."""
        if self.waiting:
            self.budget.cancel(self)
            self.waiting = False
        held = self.used = self.held() - instead
        over = held + n - self.limit
        if over > 0:
            got = self.budget.take(over)
            self.grant += got
            self.limit += got
            over -= got
        if over <= 0:
            return n
        room = n - over
        if room >= MIN_PIECE or not wait:
            return max(room, 0)
        self.waiting = True
        self.budget.wait(self, over)
        return 0

    def granted(self, n: int) -> None:
        self.grant += n
        self.limit += n
        self.waiting = False
        asyncio.get_running_loop().call_soon(self.resume)

    def settle(self) -> None:
        """Gives back the part of the grant the connection no longer holds."""
        keep = max(0, self.held() - FLOOR)
        if keep < self.grant:
            self.budget.give(self.grant - keep)
            self.grant = keep
            self.limit = FLOOR + keep

    def close(self) -> None:
        if self.waiting:
            self.budget.cancel(self)
            self.waiting = False
        if self.grant:
            self.budget.give(self.grant)
            self.grant = 0
            self.limit = FLOOR
