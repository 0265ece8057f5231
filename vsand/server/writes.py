"""How one connection answers WRITEs: its ``Writes``, to which it hands a WRITE
(``start``) and each further piece of its payload (``piece``, wire.WRITE_CONT).

The device writes a piece at once, or maps it at once and hands back a job whose
drive I/O a worker thread does (direct drives, redundancy/writejob.py; the
payload, a view into the receive buffer, is copied first). The reply goes once
the last piece is written: into the caller's ``out`` when nothing was left to
a worker, else through ``later``. A piece that fails ends the WRITE: the rest of
its payload is discarded unread and its reply is the error.

What a Writes needs of its connection is given to it (see
NbdConnection._handshake): the device, the request reader (``left``,
``discard_write``) and four callables. ``track(n, nbytes)`` counts jobs in
flight; ``offload(run, then)`` runs ``run()`` in a worker thread, then
``then(exception)`` on the loop (a job keeps its own ``error``); ``later(answer)`` has ``answer(out)`` fill a reply sent when it is
made; ``finish(out, cmd, flags, cookie, exc, t0)`` puts the reply in ``out``: the
error, a FUA write's reply after the commit, or the plain one.
"""

from __future__ import annotations

from ..nbd import constants as C


class _Write:
    """A WRITE whose pieces may be written by worker threads, in any order."""

    __slots__ = ("cookie", "flags", "t0", "pending", "err", "last")

    def __init__(self, cookie: int, flags: int, t0: float):
        self.cookie, self.flags, self.t0 = cookie, flags, t0   # t0: when it was taken (perf_counter)
        self.pending = 0            # pieces being written
        self.err: BaseException | None = None
        self.last = False           # its last piece has arrived (or the rest is discarded)


class Writes:
    __slots__ = ("dev", "reader", "track", "offload", "later", "finish", "cur", "at")

    def __init__(self, dev, reader, track, offload, later, finish):
        self.dev = dev
        self.reader = reader
        self.track = track
        self.offload = offload
        self.later = later
        self.finish = finish
        self.cur: _Write | None = None   # the WRITE whose pieces are arriving
        self.at = 0                       # where its next piece goes

    def start(self, out: list, flags: int, cookie: int, off: int, payload, t0: float) -> None:
        self.at, self.cur = off, _Write(cookie, flags, t0)
        self.piece(out, payload)

    def piece(self, out: list, payload) -> None:
        w = self.cur
        last = self.reader.left == 0
        if w.err is None:
            dev = self.dev
            try:
                job = dev.write_job(self.at, bytes(payload) if dev.defers_writes else payload)
                self.at += len(payload)
            except Exception as e:
                w.err, job = e, None
                if not last:
                    self.reader.discard_write()
                    last = True
            if job is not None:
                w.pending += 1
                self.track(1, job.nbytes)
                job.when_ready(lambda: self.offload(job.run, lambda _: self._written(job, w)))
        w.last = last
        if last and not w.pending:
            self._answer(out, w)

    def _written(self, job, w: _Write) -> None:
        job.done()                  # also when closed: it holds stripes others wait for
        self.track(-1, -job.nbytes)
        w.pending -= 1
        if job.error is not None and w.err is None:
            w.err = job.error
        if w.last and not w.pending:
            self.later(lambda out: self._answer(out, w))

    def _answer(self, out: list, w: _Write) -> None:
        self.finish(out, C.CMD_WRITE, w.flags, w.cookie, w.err, w.t0)
