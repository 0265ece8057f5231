"""How a connection answers READs (a mixin of NbdConnection, which owns the state).

A READ's map is resolved on the loop; what the page cache holds is read there
without blocking (RWF_NOWAIT), the rest in a worker thread while the loop goes
on, and its reply goes out when it completes (NBD allows any order; storage
fences the slots it resolved until then). A READ larger than ``READ_PIECE``, or
larger than the connection's room in the memory budget (server/budget.py), is
read and sent piece by piece as the client takes it: a stream, during which no
other request is handled.
"""

from __future__ import annotations

import asyncio
import logging

from ..nbd import constants as C
from ..nbd import wire

log = logging.getLogger("vsand.server")
READ_PIECE = 1 << 20    # larger READs are read and sent in pieces of this size


class ReadPath:
    def _read(self, out, flags, cookie, off, length) -> None:
        dev = self.dev
        if not length:
            out.append(wire.done_chunk(cookie) if self.structured else wire.simple(cookie))
            return
        m = self.mem
        # What the floor and the grant do not cover goes in pieces that fit.
        if length > READ_PIECE or m.used + length > m.limit and self._room(length) < length:
            self._start_stream(flags, cookie, off, length)
            return
        m.used += length
        sparse = self.structured and not flags & C.CMD_FLAG_DF   # holes as hole chunks
        job = dev.read_job(off, length)
        if job is not None and not (sparse and job.holes):
            try:
                now = job.try_now()
            except BaseException:
                job.done()
                raise
            if not now:
                self._read_off_loop(job, cookie, off)
                return
            job.done()
            out.extend(self._read_reply(cookie, off, job.buf))
            return
        if job is not None:
            job.done()
        if not sparse:
            out.extend(self._read_reply(cookie, off, dev.read(off, length)))
            return
        pieces = dev.read_sparse(off, length)
        last = len(pieces) - 1
        for i, (o, n, data) in enumerate(pieces):
            if data is None:
                out.append(wire.hole_chunk(cookie, o, n, i == last))
            else:
                out.append(wire.data_chunk_head(cookie, o, n, i == last))
                out.append(data)

    def _read_reply(self, cookie, off, data) -> tuple:
        if self.structured:
            return wire.data_chunk_head(cookie, off, len(data)), data
        return wire.simple(cookie), data

    def _read_off_loop(self, job, cookie, off) -> None:
        """The page cache did not hold it all: a worker thread reads the rest while
        the loop goes on; the reply goes out when it is done (completion order)."""
        self.inflight += 1
        self.inflight_bytes += len(job.buf)
        fut = asyncio.get_running_loop().run_in_executor(self.server.io, job.run)
        fut.add_done_callback(lambda f: self._read_done(f, job, cookie, off))

    def _read_done(self, fut, job, cookie, off) -> None:
        job.done()
        self.inflight -= 1
        self.inflight_bytes -= len(job.buf)
        if not self.closed:
            self._guarded(self._answer_read, fut, job, cookie, off)

    def _answer_read(self, fut, job, cookie, off) -> None:
        err = fut.exception()
        if err is not None:
            reply: list = []
            self._storage_error(reply, cookie, err)
        else:
            reply = self._read_reply(cookie, off, job.buf)
        if self.stream is not None:
            self.held.extend(reply)
        else:
            self.transport.writelines(reply)
        if self.disconnecting:
            self._close_when_answered()
        elif not self.paused:
            self._process()          # it may have waited for room in flight

    def _start_stream(self, flags, cookie, off, length) -> None:
        """A large READ becomes a list of runs [offset, end, data?] sent by _stream:
        one run for a simple or DF reply, else one per extent (holes cost nothing)."""
        if not self.structured or flags & C.CMD_FLAG_DF:
            runs = [[off, off + length, True]]
        else:
            runs, pos = [], off
            for n, alloc in self.dev.extents(off, length):
                runs.append([pos, pos + n, alloc])
                pos += n
        self.stream = [cookie, runs, 0]         # cookie, runs, bytes of the current run sent

    def _stream(self, out) -> None:
        """Sends the READ in ``self.stream`` while the client takes it: a data run is
        one reply header (simple, or one OFFSET_DATA chunk) followed by its bytes a
        piece at a time. An error before a run's header is an error reply (chunk);
        after it, the protocol leaves only closing the connection."""
        cookie, runs, _ = self.stream
        while runs and not self.paused and not self.closed:
            start, end, data = runs[0]
            last = len(runs) == 1
            if not data:
                out.append(wire.hole_chunk(cookie, start, end - start, last))
                runs.pop(0)
                continue
            sent = self.stream[2]
            n = min(READ_PIECE, end - start - sent)
            m = self.mem
            if m.used + n > m.limit:
                n = self._room(n)
                if not n:
                    break        # resumed by the budget or by its own replies draining
                n = min(n, end - start - sent)
            m.used += n
            try:
                piece = self.dev.read(start + sent, n)
            except Exception as e:
                if sent:
                    log.error("connection %s: read failed after its reply began (%s); closing",
                              self.peer, e)
                    self._send(out)
                    self.abort()
                    return
                self._storage_error(out, cookie, e)
                runs.clear()
                break
            if not sent:
                out.append(wire.simple(cookie) if not self.structured
                           else wire.data_chunk_head(cookie, start, end - start, last))
            out.append(piece)
            self.stream[2] = sent + n
            if self.stream[2] == end - start:
                runs.pop(0)
                self.stream[2] = 0
            self._send(out)
        if runs:
            return
        self.stream = None
        out.extend(self.held)
        self.held.clear()
