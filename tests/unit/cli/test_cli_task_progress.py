"""vsand/cli/progress.py (`task wait`, `snapclone ... --wait`) with a scripted
daemon: the three output forms and the exit status. No real time passes."""

from __future__ import annotations

import io
import json

import pytest

from vsand.cli import progress
from vsand.cli.ctl import CliError


def info(state, done, total=100, **kw):
    d = {"id": 7, "kind": "bgcopy", "target": "c1", "state": state, "phase": "copy", "error": "",
         "done": done, "total": total, "remaining": total - done, "bytes": done << 20, "rate": 0,
         "mib_s": 50.0 if state == "running" else 0.0, "eta": 3.0 if state == "running" else None,
         "created": 1000.0, "started": 1000.0, "finished": 1002.0 if state != "running" else None}
    d.update(kw)
    return d


class Tty(io.StringIO):
    def isatty(self):
        return True


class FakeTime:
    def __init__(self):
        self.t = 0.0

    def sleep(self, d):
        self.t += d

    def monotonic(self):
        return self.t


class Ctx:
    def __init__(self, script, as_json=False, out=None):
        self.script = list(script)
        self.json = as_json
        self.out = out or io.StringIO()
        self.cmd = "task wait"
        self.calls = 0

    def call(self, op, **args):
        assert (op, args) == ("task.show", {"id": 7})
        self.calls += 1
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


@pytest.fixture(autouse=True)
def fake_time(monkeypatch):
    ft = FakeTime()
    monkeypatch.setattr(progress, "time", ft)
    return ft


RUN = [info("running", 10), info("running", 40), info("running", 70), info("done", 100, phase="done")]


def test_json_prints_one_object_per_poll(fake_time):
    ctx = Ctx(RUN, as_json=True)
    assert progress.wait(ctx, 7) == 0
    lines = [json.loads(x) for x in ctx.out.getvalue().splitlines()]
    assert [x["done"] for x in lines] == [10, 40, 70, 100] and ctx.calls == 4
    assert fake_time.t == pytest.approx(3 * progress.POLL)          # polled at ~5 Hz


def test_plain_lines_when_not_a_terminal():
    slow = [info("running", i) for i in range(0, 100, 2)] + [info("done", 100)]
    ctx = Ctx(slow)
    assert progress.wait(ctx, 7) == 0
    lines = ctx.out.getvalue().splitlines()
    # one line every PLAIN_EVERY seconds, not one per poll, and always the last
    assert 3 <= len(lines) <= len(slow) * progress.POLL / progress.PLAIN_EVERY + 2
    assert lines[0] == "task 7 bgcopy c1: running (copy), 0/100 segments (0%), 0 B copied, 50.0 MiB/s, ETA 3s"
    assert lines[-1] == "task 7 bgcopy c1: done, 100/100 segments (100%), 100 MiB copied, 50.0 MiB/s on average"


def test_progress_bar_on_a_terminal():
    ctx = Ctx(RUN, out=Tty())
    assert progress.wait(ctx, 7) == 0
    out = ctx.out.getvalue()
    assert "task 7 bgcopy c1 [running, copy]" in out          # brackets are not rich markup
    assert "task 7 bgcopy c1 [done]" in out and "100/100 seg" in out and "50.0 MiB/s" in out
    assert "ETA 3s" in out


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("final,msg", [
    (info("failed", 30, error="no free space"), "task wait: task 7 (bgcopy c1) failed: no free space"),
    (info("cancelled", 30), "task wait: task 7 (bgcopy c1) was cancelled"),
    (info("cancelled", 30, error="c1 was deleted"), "was cancelled: c1 was deleted"),
])
def test_failed_or_cancelled_task_is_an_error(final, msg, as_json):
    ctx = Ctx([info("running", 10), final], as_json=as_json)
    with pytest.raises(CliError) as e:
        progress.wait(ctx, 7)
    assert msg in e.value.message and e.value.code == 1


@pytest.mark.parametrize("secs,text", [(None, "-"), (0.4, "0s"), (59, "59s"), (61, "1m01s"), (7322, "2h02m")])
def test_eta_format(secs, text):
    assert progress.eta(secs) == text
