"""A connection's READs (vsand/server/reads.py) through the five callables it is
given: streams go out piece by piece while the client takes them, other replies
wait for a stream's end, errors before and after a reply began, and what is
built goes to the client before the budget is asked for room."""

from __future__ import annotations

import struct

import pytest

from vsand.nbd import constants as C
from vsand.nbd import wire
from vsand.server.budget import FLOOR, MemoryBudget, Share
from vsand.server.reads import READ_PIECE, Broken, Reads

MiB = 1 << 20
DATA = bytes(range(256)) * (8 * MiB // 256)


class Dev:
    def __init__(self, fail_at=None):
        self.fail_at = fail_at      # reads from this offset on fail

    def read_now(self, off, n):
        return None                 # only ``read`` can do it: no worker threads here

    def read(self, off, n):
        if self.fail_at is not None and off + n > self.fail_at:
            raise OSError(5, "injected")
        return DATA[off:off + n]

    def extents(self, off, n):
        return [(n, True)]


class Conn:
    """What a connection gives its Reads, with a client that takes ``takes``
    more batches of replies (None: all of them)."""

    def __init__(self, dev, budget=MemoryBudget(1 << 30), structured=False):
        self.wire = bytearray()
        self.takes = None
        self.rooms = []             # (bytes built and not sent, room given)
        self.share = Share(budget, lambda: 0, lambda: None)
        self.reads = Reads(dev, structured, self.share, self.send, self.room, self.error,
                           self.offload)

    def send(self, out):
        if not out:
            return self.takes is None or self.takes > 0
        for item in out:
            self.wire += item
        out.clear()
        if self.takes is None:
            return True
        self.takes -= 1
        return self.takes > 0

    def room(self, n):
        self.rooms.append(self.share.reserve(n))
        return self.rooms[-1]

    def error(self, out, cookie, exc):
        out.append(wire.error_reply(cookie, C.EIO, str(exc), self.reads.structured))

    def offload(self, job, nbytes, answer):
        raise AssertionError("no read goes off the loop here")


def simple(cookie, err=0):
    return struct.pack(">IIQ", C.SIMPLE_REPLY_MAGIC, err, cookie)


def test_a_large_read_streams_while_the_client_takes_it_and_other_replies_wait():
    c = Conn(Dev())
    out: list = []
    n = 3 * READ_PIECE + 5
    c.takes = 2
    c.reads.read(out, 0, 7, 0, n)
    assert c.reads.stream is not None and out == []
    assert c.reads.go_on(out) is False                  # the client stopped after two pieces
    assert len(c.wire) == 16 + 2 * READ_PIECE
    assert c.reads.hold([simple(8)])                    # never inside the READ's bytes
    c.takes = None
    assert c.reads.go_on(out) is True and c.reads.stream is None
    assert not c.reads.hold([simple(9)])                # no stream: it may go now
    c.send(out)
    assert bytes(c.wire) == simple(7) + DATA[:n] + simple(8)


def test_a_zero_length_read_is_answered_without_storage():
    c = Conn(Dev(fail_at=0), structured=True)
    out: list = []
    c.reads.read(out, 0, 3, 0, 0)
    assert out == [wire.done_chunk(3)]


def test_a_failure_before_the_reply_began_is_an_error_reply_after_it_breaks_the_connection():
    c = Conn(Dev(fail_at=0))
    out: list = []
    c.reads.read(out, 0, 1, 0, 2 * READ_PIECE)
    assert c.reads.go_on(out) is True
    assert out == [simple(1, C.EIO)]
    c = Conn(Dev(fail_at=READ_PIECE + 1))
    out = []
    c.reads.read(out, 0, 2, 0, 2 * READ_PIECE)
    with pytest.raises(Broken):
        c.reads.go_on(out)
    assert bytes(c.wire) == simple(2) + DATA[:READ_PIECE]


def test_with_the_budget_spent_a_read_goes_in_pieces_of_the_floor_built_replies_sent_first():
    budget = MemoryBudget(MiB)
    assert budget.take(MiB) == MiB                       # others hold it all
    c = Conn(Dev(), budget)                               # its client takes every piece
    out: list = [simple(5)]                               # a reply built before this READ
    c.reads.read(out, 0, 6, 0, MiB)
    assert c.wire == simple(5)                            # sent before room was asked for
    assert c.reads.stream is not None
    assert c.reads.go_on(out) is True
    assert bytes(c.wire) == simple(5) + simple(6) + DATA[:MiB]
    assert set(c.rooms) == {FLOOR} and len(c.rooms) == 1 + MiB // FLOOR
