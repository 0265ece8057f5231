"""The task runner: background work inside the daemon's event loop (DESIGN.md §8).

Every task is a coroutine that alternates ``await throttle.wait()`` with one
synchronous step of its kind (bgcopy.py; rebuild or leveling later are new kinds),
so any ``await`` is a step boundary and NBD requests are served between steps.

Durability: a task's record goes to ``pool.save_task`` when it is created or
changes state (followed by a commit), and while it runs at most every
``SAVE_INTERVAL``; the runner also commits every ``FLUSH_INTERVAL`` while tasks
run (``FLUSH_INTERVAL_BUSY`` with NBD traffic), so progress is durable without
client flushes. ``resume()`` restarts every
task saved as queued or running; ``stop()`` ends them at a step boundary leaving
them running on disk, so the next start picks them up. Ids are never reused: the
next id is one past the highest saved, and pruning drops the lowest ids first.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import time
from collections.abc import Callable

from .. import faults
from ..errors import InvalidArgument, NotFound, VsanError
from .task import ACTIVE, CANCELLED, DONE, FAILED, FINISHED, QUEUED, RUNNING, Task
from .throttle import Throttle

log = logging.getLogger("vsand.tasks")

SAVE_INTERVAL = 1.0     # progress records: one a second is plenty for a progress bar
FLUSH_INTERVAL = 5.0    # bounds the copying a crash makes us redo (progress is resumable)
# With NBD traffic, commit rarely: every commit clears the RAID write intents, and the
# foreground's next write to each RStore then waits for a synchronous log append
# (fio 4K random writes, QD 8, beside a copy: p99 +30-60 % with a commit every 2 s,
# within run-to-run noise at 30 s). Clients that want durability send FLUSH, which
# commits our progress too.
FLUSH_INTERVAL_BUSY = 30.0
KEEP_FINISHED = 50      # finished tasks stay listed; older ones are dropped
STATS_INTERVAL = 5.0    # a debug line on the throttle's behaviour
MAX_RUNNING = 2         # more wait as queued: they would only split one loop budget


class TaskBusy(VsanError):
    errno = errno.EBUSY


class TaskRunner:
    def __init__(self, pool, kinds: dict, throttle: Throttle | None = None,
                 wall: Callable[[], float] = time.time, max_running: int = MAX_RUNNING,
                 presync: Callable[[], None] | None = None):
        """``pool``: tasks, save_task, drop_task, flush; ``kinds``: name -> kind
        object with ``check(target) -> remaining``, ``step(target, n) -> Step`` and
        ``gone(target) -> message``. ``presync``: writes back the drives' dirty data
        (run in a thread before each periodic commit, so the commit's own data sync,
        which blocks the loop, finds little left to do)."""
        self.pool = pool
        self.presync = presync
        self.kinds = kinds
        self.throttle = throttle or Throttle()
        self.clock = self.throttle.clock
        self.wall = wall
        self.max_running = max_running
        self.tasks: dict[int, Task] = {}
        self.coros: dict[int, asyncio.Task] = {}
        self.next_id = 1
        self.stopping = False
        self.on_finish: Callable[[Task], None] | None = None   # after a task ends (daemon)
        self.last_flush = self.last_stats = self.clock()
        self.load()

    def load(self) -> None:
        for rec in pool_tasks(self.pool):
            t = Task.from_record(rec)
            self.tasks[t.id] = t
        self.next_id = max(self.tasks, default=0) + 1

    # ---- control ----------------------------------------------------------------------
    def start(self, kind: str, target: str, rate: int | None = None) -> Task:
        """A new task, queued and durable (its first step runs once the loop is free)."""
        k = self.kinds.get(kind)
        if k is None:
            raise InvalidArgument(f"unknown task kind {kind!r}")
        check_rate(rate)
        busy = [t.id for t in self.tasks.values() if t.active and t.target == target]
        if busy:
            raise TaskBusy(f"task {busy[0]} is already working on {target}")
        remaining = k.check(target)
        t = Task(self.next_id, kind, target, total=remaining, rate=rate or 0, created=self.wall())
        t.bucket.set_rate(t.rate)
        self.next_id += 1
        self.tasks[t.id] = t
        self._persist(t)
        self._schedule()
        return t

    def get(self, task_id: int) -> Task:
        t = self.tasks.get(task_id)
        if t is None:
            raise NotFound(f"no task {task_id}")
        return t

    def list_tasks(self) -> list[dict]:
        now = self.clock()
        return [self.tasks[i].info(now) for i in sorted(self.tasks)]

    def show(self, task_id: int) -> dict:
        return self.get(task_id).info(self.clock())

    def cancel(self, task_id: int, why: str = "") -> Task:
        """Takes effect at once: the task's coroutine sits at a step boundary."""
        t = self.get(task_id)
        if not t.active:
            raise InvalidArgument(f"task {task_id} has already finished ({t.state})")
        self._finish(t, CANCELLED, why)
        return t

    def cancel_target(self, target: str, why: str) -> list[int]:
        ids = [t.id for t in self.tasks.values() if t.active and t.target == target]
        for i in ids:
            self.cancel(i, why)
        return ids

    def retarget(self, old: str, new: str) -> None:
        """The LD ``old`` is called ``new`` now (its stored task records follow in the
        rename's own record, disk/ops.py)."""
        for t in self.tasks.values():
            if t.target == old:
                t.target = new

    def set_rate(self, task_id: int, rate: int) -> Task:
        check_rate(rate)
        t = self.get(task_id)
        if not t.active:
            raise InvalidArgument(f"task {task_id} has already finished ({t.state})")
        t.rate = rate
        t.bucket.set_rate(rate)
        self._persist(t)
        return t

    # ---- lifecycle --------------------------------------------------------------------
    def resume(self) -> list[int]:
        """At daemon start: restart every task saved as queued or running."""
        ids = []
        for t in sorted(self.tasks.values(), key=lambda t: t.id):
            if not t.active:
                continue
            if t.kind not in self.kinds:
                self._finish(t, FAILED, f"unknown task kind {t.kind!r}")
                continue
            t.state = QUEUED
            ids.append(t.id)
        self._schedule()
        return ids

    async def stop(self) -> None:
        """At daemon stop: end every coroutine at a step boundary; the records stay
        queued / running and are committed."""
        self.stopping = True
        coros = list(self.coros.values())
        for c in coros:
            c.cancel()
        await asyncio.gather(*coros, return_exceptions=True)
        self.coros.clear()
        self.throttle.stop()
        try:
            for t in self.tasks.values():
                if t.active:
                    self.pool.save_task(t.record())
            self.pool.flush()
        except VsanError as e:          # e.g. a pool turned read-only: nothing more to save
            log.error("tasks: cannot record their state at stop: %s", e.message)

    # ---- running ----------------------------------------------------------------------
    def _schedule(self) -> None:
        if self.stopping:
            return
        queued = sorted(i for i, t in self.tasks.items() if t.state == QUEUED and i not in self.coros)
        for i in queued[:max(0, self.max_running - len(self.coros))]:
            self.coros[i] = asyncio.get_running_loop().create_task(self._run(self.tasks[i]),
                                                                   name=f"vsand-task-{i}")
        if self.coros:
            self.throttle.start()
        else:
            self.throttle.stop()

    async def _run(self, t: Task) -> None:
        try:
            await self._steps(t)
        except asyncio.CancelledError:
            pass         # only the runner cancels: stop() or cancel() already recorded why
        except Exception as e:         # a commit failed, or a bug: the daemon lives on
            if not isinstance(e, VsanError):
                log.exception("task %d (%s %s) failed", t.id, t.kind, t.target)
            if t.active:
                self._finish(t, FAILED, getattr(e, "message", None) or f"internal error: {e!r}")
        finally:
            self.coros.pop(t.id, None)
            self._schedule()

    async def _steps(self, t: Task) -> None:
        kind = self.kinds[t.kind]
        t.state = RUNNING
        t.started = t.started or self.wall()
        self._persist(t)
        t.sample(self.clock())
        while t.state == RUNNING:
            n = await self.throttle.wait(t.bucket)
            if t.state != RUNNING:
                return
            t0 = self.clock()
            try:
                faults.task_step(t.kind)
                r = kind.step(t.target, n)
                if inspect.isawaitable(r):
                    r = await r
            except NotFound:
                if t.state == RUNNING:      # not already cancelled by the delete itself
                    self._finish(t, FAILED, kind.gone(t.target))
                return
            now = self.clock()
            t.advance(r.units, r.remaining)
            t.bytes += r.nbytes
            t.phase = r.phase or t.phase
            t.sample(now)
            busy = now - t0 if r.loop_seconds is None else r.loop_seconds
            self.throttle.record(busy, r.units, r.nbytes, t.bucket)
            if t.state != RUNNING:          # cancelled while the step awaited its I/O
                return
            if r.done:
                t.done = t.total = max(t.total, t.done)     # what was left went away by itself
                self._finish(t, DONE)
                return
            await self._checkpoint(t, now)

    async def _checkpoint(self, t: Task, now: float) -> None:
        if now - self.last_stats >= STATS_INTERVAL and log.isEnabledFor(logging.DEBUG):
            st = self.throttle.take_stats()
            log.debug("throttle over %.1fs: %d steps (%d busy), %.0f%% of the loop, longest %.1f ms, "
                      "peak lag %.1f ms, %d backoffs; duty %.3f, %.2f ms/segment, %.2f ms/copied",
                      now - self.last_stats, st["steps"], st["busy_steps"],
                      100 * st["step_time"] / (now - self.last_stats), 1e3 * st["step_max"],
                      1e3 * st["lag_max"], st["backoffs"], st["duty"], 1e3 * st["seg_cost"],
                      1e3 * st["copy_cost"])
            self.last_stats = now
        if now - t.saved_at >= SAVE_INTERVAL:
            t.saved_at = now
            self.pool.save_task(t.record())
        if now - self.last_flush >= (FLUSH_INTERVAL_BUSY if self.throttle.busy else FLUSH_INTERVAL):
            self.last_flush = now           # one commit however many tasks run
            if self.presync is not None:
                try:
                    await asyncio.to_thread(self.presync)
                except (OSError, VsanError) as e:   # only an optimisation: the commit syncs anyway
                    log.debug("presync: %s", e)
            t0 = self.clock()
            self._flush()
            faults.crashpoint(f"{t.kind}.after_commit")
            self.throttle.account(self.clock() - t0)

    def _flush(self) -> None:
        self.pool.flush()
        self.last_flush = self.clock()

    def _persist(self, t: Task) -> None:
        t.saved_at = self.clock()
        self.pool.save_task(t.record())
        self._flush()

    def _finish(self, t: Task, state: str, error: str = "") -> None:
        assert state in FINISHED
        t.state, t.error, t.finished = state, error, self.wall()
        if state == DONE:
            log.info("task %d (%s %s) done: %d segments, %d bytes", t.id, t.kind, t.target, t.done, t.bytes)
        else:
            log.info("task %d (%s %s) %s%s", t.id, t.kind, t.target, state, f": {error}" if error else "")
        c = self.coros.get(t.id)
        if c is not None and c is not asyncio.current_task():
            c.cancel()
        self._prune()
        try:
            self._persist(t)
        except VsanError as e:      # the state is right in memory; the next commit retries
            log.error("task %d: cannot record %s: %s", t.id, state, e.message)
        if self.on_finish is not None and not self.stopping:
            self.on_finish(t)

    def _prune(self) -> None:
        done = sorted(i for i, t in self.tasks.items() if t.state in FINISHED)
        for i in done[:max(0, len(done) - KEEP_FINISHED)]:
            del self.tasks[i]
            self.pool.drop_task(i)


def pool_tasks(pool) -> list[dict]:
    return [rec for _, rec in sorted(pool.tasks.items())]


def check_rate(rate) -> None:
    if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate < 0):
        raise InvalidArgument(f"rate must be a whole number of MiB/s >= 0 (0 = unlimited), not {rate!r}")


__all__ = ["ACTIVE", "CANCELLED", "DONE", "FAILED", "QUEUED", "RUNNING", "TaskBusy", "TaskRunner"]
