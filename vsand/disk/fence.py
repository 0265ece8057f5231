"""The read fence (DESIGN.md §13): drive reads may run off the event loop after
their map was resolved on it, so the slots they resolved must not be reused while
they run. Every free of a slot or an RStore waits for the reads that began before
it; reads that begin later cannot have resolved what was freed.

Epochs, not a count: under a steady stream of reads the count may never reach
zero, but every read that began before a free does end.

A slot can also change owner without being freed: a copy on first write hands a
writer's allocation to its snapshot, a delete hands it to the LD that read through
the deleted one, and the new owner may then write it in place. ``moved`` counts
those; a read that began before one (``moves`` at its start differs) is not to be
trusted and is read again on the loop, where nothing interleaves.
"""

from __future__ import annotations

from collections import deque


class ReadFence:
    def __init__(self):
        self.epoch = 0
        self.active: dict[int, int] = {}     # epoch -> reads begun in it, still running
        self.due: deque = deque()            # (epoch, fn): frees waiting for older reads
        self.moves = 0                       # slots handed to another owner so far

    def moved(self) -> None:
        if self.active:
            self.moves += 1

    def begin(self) -> int:
        e = self.epoch
        a = self.active
        a[e] = a.get(e, 0) + 1
        return e

    def end(self, e: int) -> None:
        a = self.active
        left = a[e] - 1
        if left:
            a[e] = left
            return
        del a[e]
        if not self.due:
            return
        oldest = min(self.active, default=self.epoch)
        while self.due and self.due[0][0] < oldest:
            self.due.popleft()[1]()

    def after_reads(self, fn) -> None:
        """Runs ``fn`` now if no read is running, else once every read that began
        up to now has ended (in the order they were asked for)."""
        if not self.active:
            fn()
            return
        self.due.append((self.epoch, fn))
        self.epoch += 1

    @property
    def waiting(self) -> int:
        return len(self.due)
