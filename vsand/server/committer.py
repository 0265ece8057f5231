"""Group commit: every FLUSH / FUA reply parked during one loop iteration is
answered after a single commit (DESIGN.md §9: one fsync serves every waiter).

A commit covers every write already handled on any connection, which is what
CAN_MULTI_CONN promises."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("vsand.server")


class Committer:
    def __init__(self, flush):
        self.flush = flush          # callable making all handled writes durable
        self.waiters: list = []
        self.scheduled = False
        self.commits = 0

    def request(self, conn, reply: bytes) -> None:
        self.waiters.append((conn, reply))
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._commit)

    def _commit(self) -> None:
        self.scheduled = False
        waiters, self.waiters = self.waiters, []
        err = None
        try:
            self.flush()
            self.commits += 1
        except Exception as e:     # answered as an error to each waiter; the daemon lives on
            if hasattr(e, "message"):          # a storage error: its message says it all
                log.error("commit failed: %s", e.message)
            else:
                log.exception("commit failed")
            err = e
        for conn, reply in waiters:
            conn.committed(reply, err)
