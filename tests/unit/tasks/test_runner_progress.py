"""vsand/tasks/runner.py with a fake pool: progress accounting, durable records,
failures, cancel at a step boundary."""

from __future__ import annotations

import pytest
from taskfakes import Clock, FakePool, MiB, make_runner, settle

from vsand.errors import InvalidArgument, NoSpace, NotFound
from vsand.tasks import TaskBusy
from vsand.tasks import runner as R


@pytest.fixture
def env():
    clock = Clock()
    pool = FakePool(clock)
    return clock, pool


@pytest.mark.asyncio
async def test_progress_is_accounted_to_done(env):
    clock, pool = env
    pool.add_clone("c", 1000, alloc_every=2)
    pool.seg_cost = 0.01          # 5 s: a rate needs rate.WARMUP seconds of history
    runner = make_runner(clock, pool)
    t = runner.start("bgcopy", "c")
    assert (t.id, t.state, t.total, t.done) == (1, "queued", 500, 0)    # the allocated half
    assert pool.durable[1]["state"] == "queued"           # durable before the first step
    mid = None

    def probe():
        nonlocal mid
        if mid is None and 250 < t.done < 450:
            mid = runner.show(1)
        return t.state == "done"
    await settle(probe)
    assert (t.done, t.total, t.bytes) == (500, 500, 500 * MiB)
    assert t.error == "" and t.started is not None and t.finished >= t.started
    assert pool.durable[1]["state"] == "done" and pool.durable[1]["bytes"] == 500 * MiB
    # while running: done + remaining = total, a rate and an ETA
    assert mid["state"] == "running" and mid["done"] + mid["remaining"] == mid["total"] == 500
    assert mid["mib_s"] > 0 and mid["eta"] is not None and mid["eta"] > 0
    info = runner.show(1)
    assert info["remaining"] == 0 and info["eta"] is None and info["mib_s"] == 0
    assert len(pool.calls) > 1                             # stepped, not done in one call
    assert [i["id"] for i in runner.list_tasks()] == [1]


@pytest.mark.asyncio
async def test_rate_and_eta_follow_the_recent_window(env):
    clock, pool = env
    pool.add_clone("c", 10_000, alloc_every=1)
    runner = make_runner(clock, pool, rate_mib=100)          # 100 MiB/s, 1 MiB per segment
    t = runner.start("bgcopy", "c")
    await settle(lambda: t.done >= 2000)
    info = runner.show(t.id)
    assert info["mib_s"] == pytest.approx(100, rel=0.05)
    assert info["eta"] == pytest.approx(info["remaining"] / 100, rel=0.05)
    runner.cancel(t.id)


@pytest.mark.asyncio
async def test_progress_is_saved_and_committed_while_running(env):
    clock, pool = env
    pool.add_clone("c", 3000, alloc_every=1)
    runner = make_runner(clock, pool, rate_mib=100)          # ~30 s of simulated work
    start = clock.t
    t = runner.start("bgcopy", "c")
    await settle(lambda: t.state == "done")
    running = [s for s in pool.saves if s["state"] == "running"]
    assert len(running) >= 20                          # progress records while it ran...
    assert len(running) <= (clock.t - start) / R.SAVE_INTERVAL + 2     # ...at most ~1 a second
    gaps = [b - a for a, b in zip(pool.flushes, pool.flushes[1:])]
    assert max(gaps) <= R.FLUSH_INTERVAL + 0.1         # commits with no client flushing


@pytest.mark.asyncio
async def test_periodic_commit_is_preceded_by_a_presync_off_the_loop(env):
    clock, pool = env
    pool.add_clone("c", 8000, alloc_every=1)
    events = []

    def presync():
        events.append(("presync", len(pool.flushes)))
    runner = make_runner(clock, pool, rate_mib=200, presync=presync)
    t = runner.start("bgcopy", "c")
    await settle(lambda: t.state == "done")
    assert len(events) >= 5
    for _, nflush in events:                     # each presync is followed by a commit
        assert nflush < len(pool.flushes)
    # a presync that fails is only a lost optimisation
    pool.add_clone("d", 2000, alloc_every=1)

    def broken():
        raise OSError(9, "Bad file descriptor")
    runner.presync = broken
    t2 = runner.start("bgcopy", "d")
    await settle(lambda: t2.state == "done")


@pytest.mark.asyncio
async def test_cancel_stops_at_the_step_boundary(env):
    clock, pool = env
    pool.add_clone("c", 100_000)
    runner = make_runner(clock, pool)
    t = runner.start("bgcopy", "c")
    await settle(lambda: t.done > 1000)
    calls = len(pool.calls)
    runner.cancel(t.id)
    assert t.state == "cancelled" and pool.durable[t.id]["state"] == "cancelled"
    done = t.done
    for _ in range(100):
        await clock.sleep(0.1)
    assert len(pool.calls) == calls and t.done == done      # no step after the cancel
    assert not runner.coros
    with pytest.raises(InvalidArgument, match="already finished"):
        runner.cancel(t.id)
    # the clone is still dependent: a new task (new id) takes over the rest
    t2 = runner.start("bgcopy", "c")
    assert t2.id == t.id + 1 and t2.total == 50_000 - done
    await settle(lambda: t2.state == "done")
    assert pool.clone_state("c")["done"]


@pytest.mark.asyncio
async def test_deleted_target_fails_the_task(env):
    clock, pool = env
    pool.add_clone("c", 100_000)
    runner = make_runner(clock, pool)
    t = runner.start("bgcopy", "c")
    await settle(lambda: t.done > 100)
    del pool.clones["c"]
    await settle(lambda: not t.active)
    assert t.state == "failed" and "no longer exists" in t.error and "c" in t.error
    assert pool.durable[t.id]["state"] == "failed" and pool.durable[t.id]["error"] == t.error


@pytest.mark.asyncio
async def test_engine_error_fails_the_task_with_its_message(env):
    clock, pool = env
    pool.add_clone("c", 10_000)
    runner = make_runner(clock, pool)
    pool.fail["c"] = NoSpace("no free space for the copy")
    t = runner.start("bgcopy", "c")
    await settle(lambda: not t.active)
    assert (t.state, t.error) == ("failed", "no free space for the copy")
    pool.fail["c"] = RuntimeError("bug")                    # a bug fails the task, not the daemon
    t2 = runner.start("bgcopy", "c")
    await settle(lambda: not t2.active)
    assert t2.state == "failed" and "internal error" in t2.error


@pytest.mark.asyncio
async def test_cancel_target_for_lun_delete(env):
    clock, pool = env
    pool.add_clone("a", 100_000)
    pool.add_clone("b", 100_000)
    runner = make_runner(clock, pool)
    ta, tb = runner.start("bgcopy", "a"), runner.start("bgcopy", "b")
    await settle(lambda: ta.done > 10 and tb.done > 10)
    assert runner.cancel_target("a", "a was deleted") == [ta.id]
    assert ta.state == "cancelled" and ta.error == "a was deleted" and tb.state == "running"
    runner.cancel(tb.id)


@pytest.mark.asyncio
async def test_start_refuses_bad_requests(env):
    clock, pool = env
    pool.add_clone("c", 100)
    pool.add_clone("done", 0)
    runner = make_runner(clock, pool)
    with pytest.raises(NotFound):
        runner.start("bgcopy", "missing")
    with pytest.raises(InvalidArgument, match="unknown task kind"):
        runner.start("no-such-kind", "c")
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(InvalidArgument, match="rate"):
            runner.start("bgcopy", "c", rate=bad)
    assert not runner.tasks and not pool.tasks               # nothing half-created
    empty = runner.start("bgcopy", "done")        # nothing to copy: one step detaches it
    await settle(lambda: empty.state == "done")
    assert empty.total == 0 and pool.calls == [("done", pool.calls[0][1])]
    t = runner.start("bgcopy", "c", rate=1)
    with pytest.raises(TaskBusy, match=f"task {t.id} is already working on c"):
        runner.start("bgcopy", "c")
    with pytest.raises(NotFound, match="no task 99"):
        runner.show(99)
    runner.set_rate(t.id, 0)
    assert t.rate == 0 and pool.durable[t.id]["rate"] == 0
    await settle(lambda: t.state == "done")
    with pytest.raises(InvalidArgument, match="already finished"):
        runner.set_rate(t.id, 5)
