"""The daemon-wide memory budget (vsand/server/budget.py): what is taken, given
back, and who waits for it in which order."""

from __future__ import annotations

import asyncio

from vsand.server.budget import FLOOR, MIN_PIECE, MemoryBudget, Share

KiB = 1 << 10


class FakeConn:
    """What a connection tells its Share: the bytes it holds, and a resume hook."""

    def __init__(self, budget: MemoryBudget):
        self.holds = 0
        self.resumed = 0
        self.share = Share(budget, lambda: self.holds, self.resume)

    def resume(self):
        self.resumed += 1


def test_take_gives_what_is_free_and_give_returns_it():
    b = MemoryBudget(100)
    assert b.take(60) == 60
    assert b.take(60) == 40                # partial: what is left
    assert b.take(1) == 0
    b.give(70)
    assert b.used == 30 and b.take(100) == 70


def test_waiters_are_served_in_order_and_take_does_not_jump_the_queue():
    b = MemoryBudget(100)
    assert b.take(100) == 100
    order = []

    class W:
        def __init__(self, name):
            self.name = name

        def granted(self, n):
            order.append((self.name, n))

    first, second = W("first"), W("second")
    b.wait(first, 50)
    b.wait(second, 10)
    b.give(40)                             # not enough for the head: nobody is served
    assert order == [] and b.take(5) == 0  # the 40 free bytes are kept for the queue
    b.give(20)
    assert order == [("first", 50), ("second", 10)] and b.used == 100
    assert b.waiting() == 0


def test_cancelling_the_head_lets_the_next_waiter_in():
    b = MemoryBudget(100)
    b.take(100)
    got = []
    big = type("W", (), {"granted": lambda self, n: got.append(("big", n))})()
    small = type("W", (), {"granted": lambda self, n: got.append(("small", n))})()
    b.wait(big, 80)
    b.wait(small, 10)
    b.give(30)
    assert got == []
    b.cancel(big)
    assert got == [("small", 10)]


def test_a_wait_for_more_than_the_total_is_capped():
    b = MemoryBudget(100)
    got = []
    w = type("W", (), {"granted": lambda self, n: got.append(n)})()
    b.wait(w, 1000)
    assert got == [100]


def test_share_floor_grant_pieces_and_settle():
    b = MemoryBudget(1 << 20)
    c = FakeConn(b)
    s = c.share
    assert s.reserve(FLOOR) == FLOOR and b.used == 0           # the floor is the connection's own
    c.holds = FLOOR
    assert s.reserve(256 * KiB) == 256 * KiB and b.used == 256 * KiB == s.grant
    assert s.limit == FLOOR + 256 * KiB
    c.holds = FLOOR + 256 * KiB
    assert s.reserve(1 << 20) == 768 * KiB                     # what was left: the caller sends a piece
    assert b.used == 1 << 20
    c.holds = FLOOR + 100 * KiB                                # the client took some replies
    s.settle()
    assert s.grant == b.used == 100 * KiB and s.limit == FLOOR + 100 * KiB
    s.close()
    assert b.used == 0 and s.grant == 0


def test_share_with_no_room_waits_and_is_resumed_from_the_loop():
    async def main():
        b = MemoryBudget(1 << 20)
        hog, c = FakeConn(b), FakeConn(b)
        hog.holds = FLOOR
        assert hog.share.reserve(1 << 20) == 1 << 20           # the hog spent it all
        c.holds = FLOOR - MIN_PIECE + 1                        # less than a piece left of c's floor
        assert c.share.reserve(4 * KiB) == 4 * KiB             # a small read still fits
        assert c.share.reserve(128 * KiB) == 0                 # a larger one waits
        assert c.share.waiting and b.waiting() == 1
        hog.holds = 0
        hog.share.settle()                                     # the hog's client read its replies
        assert c.share.grant == 128 * KiB - MIN_PIECE + 1 and not c.share.waiting
        assert c.resumed == 0                                  # never inside the hog's callback
        await asyncio.sleep(0)
        assert c.resumed == 1
        assert c.share.reserve(128 * KiB) == 128 * KiB
        c.share.close()
        hog.share.close()
        assert b.used == 0
    asyncio.run(main())


def test_share_that_resumed_by_itself_leaves_the_queue():
    b = MemoryBudget(512 * KiB)
    hog, c = FakeConn(b), FakeConn(b)
    hog.holds = FLOOR
    hog.share.reserve(512 * KiB)
    c.holds = FLOOR
    assert c.share.reserve(64 * KiB) == 0 and b.waiting() == 1
    c.holds = 0                                                # its own replies drained
    assert c.share.reserve(64 * KiB) == 64 * KiB
    assert b.waiting() == 0 and not c.share.waiting
    c.share.close()
    assert b.used == 512 * KiB                                 # the hog's, untouched
