"""vsand/tasks/runner.py across daemon restarts: resume from saved records, stop at
a step boundary, ids never reused, finished tasks pruned, the running limit."""

from __future__ import annotations

import asyncio

import pytest
from taskfakes import Clock, FakePool, make_runner, settle

from vsand.tasks import runner as R


def rec(i, state, target, done=0, total=0, kind="bgcopy"):
    return {"id": i, "kind": kind, "target": target, "state": state, "error": "", "done": done,
            "total": total, "bytes": 0, "rate": 0, "created": 1.0, "started": 2.0, "finished": None}


@pytest.mark.asyncio
async def test_resume_restarts_queued_and_running_tasks_only():
    clock = Clock()
    saved = {3: rec(3, "running", "a", done=40, total=100), 5: rec(5, "queued", "b"),
             7: rec(7, "done", "x"), 8: rec(8, "cancelled", "y"), 9: rec(9, "running", "z", kind="no-such-kind")}
    pool = FakePool(clock, saved)
    pool.add_clone("a", 100)
    pool.clones["a"]["next"] = 40
    pool.add_clone("b", 50)
    runner = make_runner(clock, pool)
    assert runner.next_id == 10
    assert runner.resume() == [3, 5]
    t3, t5 = runner.tasks[3], runner.tasks[5]
    await settle(lambda: t3.state == t5.state == "done")
    assert (t3.done, t3.total, t3.started) == (100, 100, 2.0)    # counts carry over the restart
    assert t5.done == 25          # its allocated segments: only copies are work
    assert runner.tasks[7].state == "done" and runner.tasks[8].state == "cancelled"
    assert runner.tasks[9].state == "failed" and "unknown task kind" in runner.tasks[9].error
    assert {i: r["state"] for i, r in pool.durable.items()} == \
        {3: "done", 5: "done", 7: "done", 8: "cancelled", 9: "failed"}
    pool.add_clone("a2", 5)
    assert runner.start("bgcopy", "a2").id == 10            # past every saved id


@pytest.mark.asyncio
async def test_stop_leaves_tasks_running_on_disk_and_the_next_start_finishes_them():
    clock = Clock()
    pool = FakePool(clock)
    pool.add_clone("c", 100_000)
    runner = make_runner(clock, pool)
    t = runner.start("bgcopy", "c")
    await settle(lambda: t.done > 5000)
    await runner.stop()
    calls = len(pool.calls)
    assert not runner.coros
    saved = pool.durable[t.id]
    assert saved["state"] == "running" and saved["done"] == t.done     # committed at stop
    for _ in range(50):
        await clock.sleep(0.1)
    assert len(pool.calls) == calls                                     # really stopped

    pool2 = FakePool(clock, pool.durable)         # "restart": only what was durable
    pool2.clones = pool.clones
    runner2 = make_runner(clock, pool2)
    assert runner2.resume() == [t.id]
    t2 = runner2.tasks[t.id]
    await settle(lambda: t2.state == "done")
    assert t2.done == 50_000 and t2.total == 50_000          # its allocated half: the copies


@pytest.mark.asyncio
async def test_ids_are_never_reused_and_old_finished_tasks_are_pruned(monkeypatch):
    monkeypatch.setattr(R, "KEEP_FINISHED", 3)
    clock = Clock()
    pool = FakePool(clock)
    runner = make_runner(clock, pool)
    ids = []
    for i in range(6):
        pool.add_clone(f"c{i}", 10)
        t = runner.start("bgcopy", f"c{i}")
        ids.append(t.id)
        await settle(lambda t=t: t.state == "done")
    assert ids == [1, 2, 3, 4, 5, 6]
    assert sorted(runner.tasks) == [4, 5, 6] and sorted(pool.durable) == [4, 5, 6]
    assert pool.dropped == [1, 2, 3]
    # a restart numbers on from the highest saved id, which pruning never drops
    runner2 = make_runner(clock, FakePool(clock, pool.durable))
    assert runner2.next_id == 7
    # a running task is never pruned, however old
    pool3 = FakePool(clock)
    pool3.add_clone("slow", 10_000_000)
    r3 = make_runner(clock, pool3)
    slow = r3.start("bgcopy", "slow")
    for i in range(5):
        pool3.add_clone(f"q{i}", 5)
        t = r3.start("bgcopy", f"q{i}")
        await settle(lambda t=t: t.state == "done")
    assert slow.id in r3.tasks and slow.state == "running"
    assert sorted(r3.tasks) == [1, 4, 5, 6]
    r3.cancel(slow.id)


@pytest.mark.asyncio
async def test_at_most_max_running_tasks_step_at_once():
    clock = Clock()
    pool = FakePool(clock)
    for n in "abc":
        pool.add_clone(n, 20_000)
    runner = make_runner(clock, pool, max_running=2)
    a, b, c = (runner.start("bgcopy", n) for n in "abc")
    await settle(lambda: a.done > 100 and b.done > 100)
    assert c.state == "queued" and c.done == 0
    assert {name for name, _ in pool.calls} == {"a", "b"}
    runner.cancel(a.id)
    await settle(lambda: c.state == "running" and c.done > 0)
    await settle(lambda: b.state == c.state == "done")


@pytest.mark.asyncio
async def test_two_tasks_share_the_loop_round_robin():
    clock = Clock()
    pool = FakePool(clock)
    pool.add_clone("a", 50_000)
    pool.add_clone("b", 50_000)
    runner = make_runner(clock, pool)
    a, b = runner.start("bgcopy", "a"), runner.start("bgcopy", "b")
    await settle(lambda: a.done + b.done > 20_000)
    assert min(a.done, b.done) > 0.3 * max(a.done, b.done)       # neither starves
    await runner.stop()


@pytest.mark.asyncio
async def test_foreground_traffic_shrinks_steps():
    clock = Clock()
    pool = FakePool(clock)
    pool.add_clone("c", 100_000, alloc_every=1)
    count = [0]

    def foreground():
        count[0] += 1                  # the daemon served requests between every two steps
        return count[0]
    runner = make_runner(clock, pool, foreground=foreground)
    t = runner.start("bgcopy", "c")
    await settle(lambda: t.done > 2000)
    assert runner.throttle.busy
    assert max(n for _, n in pool.calls[5:]) <= 2
    await runner.stop()
    assert not asyncio.all_tasks() - {asyncio.current_task()}
