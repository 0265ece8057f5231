"""A task's progress figures (issue 13 item 8) with an injected clock: the total is
fixed at the start, the rate is a moving average over recent seconds, and the ETA
is "-" (None) until there is a rate, then moves smoothly."""

from __future__ import annotations

import pytest

from vsand.tasks.rate import TAU, WARMUP, Ewma
from vsand.tasks.task import RUNNING, Task


def running(total: int) -> Task:
    return Task(1, "bgcopy", "c", state=RUNNING, total=total)


def test_no_rate_before_the_warmup_then_the_steady_speed():
    r = Ewma()
    assert r.rate(0.0) is None
    r.update(0.0, 0)
    for i in range(1, 20):                       # 100 units/s in 0.1 s steps
        r.update(i / 10, 10 * i)
        if i / 10 < WARMUP:
            assert r.rate(i / 10) is None
    assert r.rate(1.9) is None
    r.update(2.0, 200)
    assert r.rate(2.0) == pytest.approx(100, rel=1e-6)     # no start-up bias towards 0


def test_uneven_steps_give_the_time_weighted_speed():
    r = Ewma()
    t = c = 0.0
    r.update(t, c)
    for _ in range(30):                          # a burst of 1 ms steps, then a 1 s wait
        for _ in range(100):
            t += 0.001
            c += 1
            r.update(t, c)
        t += 1.0
        r.update(t, c)
    assert r.rate(t) == pytest.approx(100 / 1.1, rel=0.1)


def test_a_new_speed_takes_over_within_a_few_time_constants():
    r = Ewma()
    t = c = 0.0
    r.update(t, c)
    while t < 30:
        t, c = t + 0.5, c + 50                     # 100/s
        r.update(t, c)
    while t < 30 + 3 * TAU:
        t, c = t + 0.5, c + 25                     # 50/s
        r.update(t, c)
    assert r.rate(t) == pytest.approx(50, rel=0.06)


def test_a_stall_lowers_the_rate_smoothly():
    r = Ewma()
    for i in range(101):
        r.update(i / 10, 10 * i)                   # 100/s for 10 s
    last = r.rate(10.0)
    for k in range(1, 50):                         # then nothing for 5 s
        now = 10.0 + k / 10
        v = r.rate(now)
        assert 0 < v < last and v > 0.95 * last    # down a little every 0.1 s, never to 0 at once
        last = v


def test_progress_starts_at_zero_and_the_total_stays():
    t = running(400)
    assert t.info(0.0)["done"] == 0 and t.info(0.0)["remaining"] == 400
    t.advance(10, 390)
    assert (t.done, t.total) == (10, 400)
    t.advance(10, 300)                 # 80 segments went away (clients overwrote them): done
    assert (t.done, t.total) == (100, 400)
    t.advance(0, 350)                  # new work appeared: the total grows, done stays
    assert (t.done, t.total) == (100, 450)
    t.advance(350, 0)
    assert (t.done, t.total) == (450, 450)


def test_eta_is_none_until_there_is_a_rate_then_follows_it():
    t = running(1000)
    t.sample(0.0)
    etas = []
    for i in range(1, 81):                        # 50 units/s for 8 s, polled every 0.1 s
        now = i / 10
        t.advance(5, 1000 - 5 * i)
        t.sample(now)
        etas.append(t.info(now)["eta"])
    assert all(e is None for e in etas[:int(WARMUP * 10) - 1])
    assert etas[-1] == pytest.approx((1000 - 400) / 50, rel=0.02)
    known = [e for e in etas if e is not None]
    assert all(b <= a for a, b in zip(known, known[1:]))      # steady work: the ETA only falls


def bursty_etas(burst_units: int, burst_s: float, pause_s: float, total: int = 100_000):
    """ETAs polled every 0.2 s of a task that copies ``burst_units`` in ``burst_s``,
    then waits ``pause_s`` (a rate limit's token bucket: a step runs into debt, then
    waits), with the true ETA at each poll."""
    t = running(total)
    t.sample(0.0)
    now, done, out = 0.0, 0, []
    avg = burst_units / (burst_s + pause_s)
    while now < 120:
        for _ in range(8):
            now += burst_s / 8
            done += burst_units // 8
            t.advance(burst_units // 8, total - done)
            t.sample(now)
        poll_until = now + pause_s
        while now < poll_until:
            now += 0.2
            out.append((now, t.info(now)["eta"], (total - done) / avg))
    return out


@pytest.mark.parametrize("burst_s, pause_s", [(0.4, 2.0), (0.025, 10.0)])
def test_bursty_steps_keep_the_eta_near_the_truth(burst_s, pause_s):
    """The old 5 s window gave no ETA (or 0 s) when a pause filled it and leapt when
    a burst entered it (issue 13: "ETA jumps from 0 s to 6 m 59 s")."""
    polls = bursty_etas(40, burst_s, pause_s)
    later = [(eta, true) for now, eta, true in polls if now > WARMUP + pause_s]
    assert all(eta is not None and eta > 0 for eta, _ in later)
    settled = [(eta, true) for now, eta, true in polls if now > 3 * TAU]
    assert all(0.5 < eta / true < 2.0 for eta, true in settled), \
        max(settled, key=lambda p: abs(p[0] / p[1] - 1))
