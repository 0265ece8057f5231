"""How one connection answers READs: its ``Reads``, to which it hands each READ.

A READ's map is resolved on the loop; what the page cache holds is read there
without blocking (RWF_NOWAIT), the rest in a worker thread while the loop goes
on, and its reply goes out when it completes (NBD allows any order; storage
fences the slots it resolved until then). An I/O error on those paths sends the
READ to the device's plain ``read`` on the loop, which storage serves from
redundancy when there is some. A READ larger than ``READ_PIECE``, or
larger than the connection's room in the memory budget (server/budget.py), is a
``Stream``: read and sent piece by piece as the client takes it. While one is
under way the connection handles no other request, and replies made meanwhile
(a commit's, a worker thread's) wait for its end: never inside its bytes.

What a Reads needs of its connection is given to it (see NbdConnection._handshake):
its budget.Share and four callables. ``send(out)`` hands replies to the client
and says whether it takes more; ``room(n)``, how many bytes of an n-byte reply may be read
now (0: the connection waits to be resumed); ``error(out, cookie, exc)`` appends
the reply for a storage error; ``offload(job, nbytes, answer)`` has a read job's
drive I/O done off the loop (io_uring or a worker thread), then calls
``answer(error or None, out)`` on the loop. The connection learns from
``stream`` whether a READ is being streamed, and calls ``go_on`` to continue it.
"""

from __future__ import annotations

from time import perf_counter

from ..nbd import constants as C
from ..nbd import wire

READ_PIECE = 1 << 20    # larger READs are read and sent in pieces of this size


class Broken(Exception):
    """A streamed READ failed after its reply began: the protocol leaves only
    closing the connection."""


class Stream:
    """A READ being sent in pieces: the runs [offset, end, data?] still to send
    (one for a simple or DF reply, else one per extent: holes cost nothing), and
    how many bytes of the first one went out."""

    __slots__ = ("cookie", "runs", "sent", "t0")

    def __init__(self, cookie: int, runs: list, t0: float):
        self.cookie = cookie
        self.runs = runs
        self.sent = 0
        self.t0 = t0                # when the READ was taken (perf_counter)


class Reads:
    __slots__ = ("dev", "structured", "mem", "send", "room", "error", "offload",
                 "stream", "held", "took")

    def __init__(self, dev, structured: bool, mem, send, room, error, offload,
                 took=lambda seconds: None):
        """``took(seconds)``: a streamed READ was answered, that long after it began."""
        self.dev = dev
        self.structured = structured
        self.mem = mem              # the connection's budget.Share
        self.send = send
        self.room = room
        self.error = error
        self.offload = offload
        self.took = took
        self.stream: Stream | None = None
        self.held: list = []        # replies that wait for the end of the stream

    def read(self, out: list, flags: int, cookie: int, off: int, length: int,
             t0: float = 0.0) -> None:
        """Answers a READ the protocol allows: its reply in ``out``, later (a worker
        thread reads it), or as ``stream``, which the connection then lets ``go_on``."""
        if not length:
            out.append(wire.done_chunk(cookie) if self.structured else wire.simple(cookie))
            return
        m = self.mem
        # What the floor and the grant do not cover goes in pieces that fit.
        if length > READ_PIECE or m.used + length > m.limit and self._room(out, length) < length:
            self._start_stream(flags, cookie, off, length, t0)
            return
        m.used += length
        dev = self.dev
        sparse = self.structured and not flags & C.CMD_FLAG_DF   # holes as hole chunks
        try:
            job = dev.read_now(off, length)
            if job.__class__ is bytearray:       # the page cache held it all
                out.extend(self._reply(cookie, off, job))
                return
            if job is not None and not (sparse and job.holes):
                try:
                    now = job.try_now()
                except BaseException:
                    job.done()
                    raise
                if not now:
                    self.offload(job, len(job.buf),
                                 lambda err, reply: self._answer(err, reply, job, cookie, off))
                    return
                job.done()
                out.extend(self._reply(cookie, off, job.buf))
                return
            if job is not None:
                job.done()
        except Exception as e:
            # An I/O error on the fast paths: ``read`` may still serve it (storage
            # reads it from redundancy, if there is some); any other error is the reply.
            if getattr(e, "errno", None) != C.EIO:
                raise
        if not sparse:
            out.extend(self._reply(cookie, off, dev.read(off, length)))
            return
        pieces = dev.read_sparse(off, length)
        last = len(pieces) - 1
        for i, (o, n, data) in enumerate(pieces):
            if data is None:
                out.append(wire.hole_chunk(cookie, o, n, i == last))
            else:
                out.append(wire.data_chunk_head(cookie, o, n, i == last))
                out.append(data)

    def hold(self, reply: list) -> bool:
        """Keeps ``reply`` (to another request) for the end of the READ being
        streamed, if one is: True. False: it may go now."""
        if self.stream is None:
            return False
        self.held.extend(reply)
        return True

    def _room(self, out: list, n: int) -> int:
        # What is built goes to the client first: then the connection's share sees
        # all it holds, and the transport resumes it if the kernel refuses some.
        self.send(out)
        return self.room(n)

    def _reply(self, cookie, off, data) -> tuple:
        if self.structured:
            return wire.data_chunk_head(cookie, off, len(data)), data
        return wire.simple(cookie), data

    def _answer(self, err, reply, job, cookie, off) -> None:
        """The drive I/O is done; ``reply`` is None when the connection closed."""
        job.done()
        if reply is None:
            return
        if err is None and job.intact():
            reply.extend(self._reply(cookie, off, job.buf))
        else:
            # A drive error (``read`` serves it from redundancy when there is some,
            # and failure detection counts it), or a slot it read changed owner
            # meanwhile: read it again, here.
            try:
                data = self.dev.read(off, len(job.buf))
            except Exception as e:
                self.error(reply, cookie, e)
                return
            reply.extend(self._reply(cookie, off, data))

    def _start_stream(self, flags, cookie, off, length, t0: float) -> None:
        if not self.structured or flags & C.CMD_FLAG_DF:
            runs = [[off, off + length, True]]
        else:
            runs, pos = [], off
            for n, alloc in self.dev.extents(off, length):
                runs.append([pos, pos + n, alloc])
                pos += n
        self.stream = Stream(cookie, runs, t0)

    def go_on(self, out: list) -> bool:
        """Sends the stream while the client takes it (call it only while it does);
        True once it is done. A data run is one reply header (simple, or one
        OFFSET_DATA chunk) followed by its bytes a piece at a time. An error before
        a run's header is an error reply (chunk); after it, ``Broken``."""
        s = self.stream
        runs = s.runs
        while runs:
            start, end, data = runs[0]
            last = len(runs) == 1
            if not data:
                out.append(wire.hole_chunk(s.cookie, start, end - start, last))
                runs.pop(0)
                continue
            sent = s.sent
            n = min(READ_PIECE, end - start - sent)
            m = self.mem
            if m.used + n > m.limit:
                n = self._room(out, n)
                if not n:
                    return False     # resumed by the budget or by its own replies draining
                n = min(n, end - start - sent)
            m.used += n
            try:
                piece = self.dev.read(start + sent, n)
            except Exception as e:
                if sent:
                    raise Broken(f"read failed after its reply began ({e})") from e
                self.error(out, s.cookie, e)
                runs.clear()
                break
            if not sent:
                out.append(wire.simple(s.cookie) if not self.structured
                           else wire.data_chunk_head(s.cookie, start, end - start, last))
            out.append(piece)
            s.sent = sent + n
            if s.sent == end - start:
                runs.pop(0)
                s.sent = 0
            if not self.send(out) and runs:
                return False         # resumed when the client took it
        self.stream = None
        self.took(perf_counter() - s.t0)
        out.extend(self.held)
        self.held.clear()
        return True
