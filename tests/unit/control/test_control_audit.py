"""The audit of control operations is generic (issue 13 item 7): every op in the
schema that is not a query leaves exactly one "vsand.audit" line with the caller's
pid/uid, its arguments and the outcome; queries leave none. Run over a real UNIX
socket with a stand-in for the handlers (the interop tests use the real ones)."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
import pytest_asyncio

from vsand.control import schema
from vsand.control.audit import describe
from vsand.control.client import ControlError, call
from vsand.listeners import Listeners
from vsand.control.server import ControlServer
from vsand.errors import InvalidArgument


class Handlers:
    """Every op answers {}; "lun.delete" says no, like a pool that has no such LUN."""

    def __getattr__(self, name):
        if name == "lun_delete":
            def refuse(**_):
                raise InvalidArgument("no LD named 'x'")
            return refuse
        return lambda **_: {}


SAMPLE = {str: "x", int: 1 << 30, bool: True}


def args_for(op: str) -> dict:
    return {k: SAMPLE[t] for k, (t, required) in schema.OPS[op].items() if required}


@pytest_asyncio.fixture
async def control(tmp_path, caplog):
    """The path of a control socket served with the stand-in handlers."""
    caplog.set_level(logging.INFO, logger="vsand.audit")
    srv = ControlServer(Handlers())
    path = str(tmp_path / "c.sock")
    listeners = Listeners([])
    listeners.bind_unix(path + ".nbd", path)
    await srv.listen_socket(listeners.control)
    yield path
    await srv.close()
    listeners.close()


@pytest.mark.asyncio
async def test_every_mutating_op_is_audited_once_and_queries_never(control, caplog):
    seen = []
    for op in sorted(schema.OPS):
        caplog.clear()
        try:
            await asyncio.to_thread(call, control, op, **args_for(op))
            outcome = "ok"
        except ControlError as e:
            outcome = f"refused: {e}"
        lines = [r.getMessage() for r in caplog.records if r.name == "vsand.audit"]
        seen += lines
        if op in schema.QUERIES:
            assert lines == [], (op, lines)
            continue
        who = f"uid={os.getuid()}(root)" if os.getuid() == 0 else f"uid={os.getuid()}"
        assert len(lines) == 1 and lines[0].startswith(f"audit: {who}"), (op, lines)
        assert f" pid={os.getpid()} {describe(op, args_for(op))}: {outcome}" in lines[0], lines
    assert any(line.endswith("lun.delete name=x: refused: no LD named 'x'") for line in seen), seen


@pytest.mark.asyncio
async def test_a_malformed_mutating_request_is_audited_as_refused(control, caplog):
    with pytest.raises(ControlError):
        await asyncio.to_thread(call, control, "lun.create", name="x", size="big")
    assert "lun.create name=x size=big: refused: lun.create: argument 'size' must be int" in caplog.text


def test_describe_shows_sizes_and_quotes_odd_names():
    assert describe("lun.create", {"name": "demo", "size": 1 << 30, "raid": 5}) == \
        "lun.create name=demo size=1 GiB raid=5"
    assert describe("lun.resize", {"name": "d", "delta": -(512 << 20)}) == "lun.resize name=d delta=-512 MiB"
    assert describe("lun.resize", {"name": "d", "delta": 3 << 30}) == "lun.resize name=d delta=+3 GiB"
    assert describe("lun.create", {"name": "a b\nc"}) == "lun.create name='a b\\nc'"
    assert describe("lun.create", {"name": ""}) == "lun.create name=''"
    assert len(describe("lun.create", {"name": "n" * 10000})) < 300
