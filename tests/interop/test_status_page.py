"""The status page's JSON and event stream (vsand/web/status.py) on a real daemon
started with --metrics: what it says of LUNs, snapshots, clones, drives and tasks
is what vsanctl says; it refuses everything but GET; an event brings a snapshot
created by vsanctl without anyone asking again."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request

import pytest
from daemonkit import Daemon, free_port, healthy
from test_vsanctl import ctl, js

from vsand.web.status import TICK
from vsand.web.view import FAILED, LEGEND, REBUILDING, USED

MiB = 1 << 20
PAGE_KEYS = ("status", "capacity", "reserve_psegs", "runs")     # what drive list does not have


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    port = free_port()
    d = Daemon(tmp_path_factory.mktemp("vsand-web"), drive_size="256M",
               extra=["--metrics", f"127.0.0.1:{port}"]).start()
    d.web = f"127.0.0.1:{port}"
    # thick: its PSEGs are taken at once, so drive maps show used runs without a client
    ctl(d, "lun", "create", "vol", "--size", "32M", "--thick")
    ctl(d, "snapshot", "create", "vol", "vol-s1")
    ctl(d, "snapshot", "create", "vol", "vol-s2")
    ctl(d, "snapclone", "create", "vol-s1", "vol-c1")
    ctl(d, "lun", "create", "mirror", "--size", "16M", "--raid", "1")
    # access rules: vsanctl shows them (behind the control socket), the page must not
    ctl(d, "lun", "set", "mirror", "--allow-cert", "db1.secret.example",
        "--readonly-for", "10.99.7.0/24")
    yield d
    healthy(d)
    assert d.stop() == 0, d.read_log()


def get(d, path: str, method: str = "GET", host: str | None = None):
    req = urllib.request.Request(f"http://{d.web}{path}", method=method)
    if host:
        req.add_header("Host", host)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.headers, r.read()


def status(d) -> dict:
    code, headers, body = get(d, "/api/status")
    assert code == 200 and headers["Content-Type"].startswith("application/json")
    return json.loads(body)


def flatten(nodes, parent=None):
    for n in nodes:
        yield parent, {k: v for k, v in n.items() if k != "children"}
        yield from flatten(n["children"], n["name"])


def wait_task_done(d, target: str) -> None:
    deadline = time.monotonic() + 30
    while not any(t["target"] == target and t["state"] == "done" for t in js(d, "task", "list")):
        assert time.monotonic() < deadline, js(d, "task", "list")
        time.sleep(0.05)


def test_json_matches_vsanctl(web):
    wait_task_done(web, "vol-c1")
    st = status(web)
    # every LD once, each as `lun list` has it, under its origin
    rows = {r["name"]: r for r in js(web, "lun", "list")}
    nodes = list(flatten(st["trees"]))
    assert sorted(n["name"] for _, n in nodes) == sorted(rows)
    for parent, n in nodes:
        row = {k: v for k, v in rows[n["name"]].items() if k not in ("allow_cert", "readonly_for")}
        assert n == {**row, "access_rules": n["name"] == "mirror"}
        assert parent == n["origin"]
    assert [(p, n["name"]) for p, n in nodes] == [(None, "vol"), ("vol", "vol-s1"), ("vol-s1", "vol-c1"),
                                                  ("vol", "vol-s2"), (None, "mirror")]
    # the drives as `drive list` has them, each with its PSEG map
    drives = js(web, "drive", "list")
    assert [{k: v for k, v in x.items() if k not in PAGE_KEYS} for x in st["drives"]] == drives
    assert st["legend"] == list(LEGEND)
    for x in st["drives"]:
        assert x["status"] == "ok" and sum(n for _, n in x["runs"]) == x["psegs"]
        used = sum(n for c, n in x["runs"] if c == USED)
        assert used == x["psegs"] - x["free_psegs"] - x["reserve_psegs"]
        assert all(a[0] != b[0] for a, b in zip(x["runs"], x["runs"][1:])), "runs are merged"
    # vol (32 MiB RAID5, thick) and its clone: 4 RStores of 5 PSEGs each, which du counts too
    used = sum(n for x in st["drives"] for c, n in x["runs"] if c == USED)
    assert used == 2 * 4 * 5 and used * st["pool"]["pseg"] == js(web, "du")["pool"]["physical"]
    pool, want = st["pool"], js(web, "status")
    for k in ("capacity", "free", "luns", "drives", "failed_drives", "state"):
        assert pool[k] == want[k], k
    assert pool["allocated"] == js(web, "du")["pool"]["allocated"]
    tasks = [{k: t[k] for k in ("id", "kind", "target", "state", "done", "total")} for t in st["tasks"]]
    assert tasks == [{k: t[k] for k in ("id", "kind", "target", "state", "done", "total")}
                     for t in js(web, "task", "list")]


def test_access_rules_sockets_and_pid_stay_behind_the_control_socket(web):
    """Whoever reaches the listener reads no LD's access rules (only that it has
    some), nor where the daemon's sockets are, nor its pid."""
    assert js(web, "lun", "show", "mirror")["allow_cert"] == ["db1.secret.example"]
    body = get(web, "/api/status")[2].decode()
    st = json.loads(body)
    for secret in ("db1.secret.example", "10.99.7.", "allow_cert", "readonly_for"):
        assert secret not in body, secret
    assert {n["name"]: n["access_rules"] for _, n in flatten(st["trees"])}["mirror"] is True
    want = js(web, "status")
    for k in ("nbd_socket", "listen", "pid"):
        assert k in want and k not in st["pool"], k
    assert want["nbd_socket"] not in body


def test_page_and_assets_are_served(web):
    code, headers, body = get(web, "/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<script src="status.js">' in body and b"http" not in body     # nothing from elsewhere
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for path, kind in (("/status.js", "text/javascript"), ("/status.css", "text/css")):
        code, headers, body = get(web, path)
        assert code == 200 and headers["Content-Type"].startswith(kind) and body


def test_only_get_is_served(web):
    before = js(web, "lun", "list")
    for path in ("/", "/api/status", "/events", "/status.js"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            with pytest.raises(urllib.error.HTTPError) as e:
                get(web, path, method)
            assert e.value.code == 405, (method, path)
    assert get(web, "/api/status", "HEAD")[2] == b""
    with pytest.raises(urllib.error.HTTPError) as e:
        get(web, "/events", "HEAD")
    assert e.value.code == 405
    assert js(web, "lun", "list") == before


def test_other_host_names_are_refused(web):
    """A page on another site that rebinds its name to 127.0.0.1 gets nothing."""
    with pytest.raises(urllib.error.HTTPError) as e:
        get(web, "/api/status", host=f"attacker.example:{web.web.rpartition(':')[2]}")
    assert e.value.code == 421
    assert get(web, "/api/status", host=f"localhost:{web.web.rpartition(':')[2]}")[0] == 200


class Events:
    """The /events stream, read event by event, each read bounded by the socket timeout."""

    def __init__(self, d):
        host, port = d.web.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)
        self.conn.request("GET", "/events")
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200 and self.resp.headers["Content-Type"] == "text/event-stream"

    def next(self, deadline: float) -> dict:
        """The next data event's JSON (pings skipped), before ``deadline`` (monotonic)."""
        kind, data = "message", []
        while True:
            assert time.monotonic() < deadline, "no event came in time"
            line = self.resp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line:
                if kind == "message" and data:
                    return json.loads("\n".join(data))
                kind, data = "message", []

    def close(self):
        self.conn.close()


def names(st: dict) -> set[str]:
    return {n["name"] for _, n in flatten(st["trees"])}


def test_events_bring_a_new_snapshot(web):
    ev = Events(web)
    try:
        deadline = time.monotonic() + 10
        assert "vol-s3" not in names(ev.next(deadline))
        ctl(web, "snapshot", "create", "vol", "vol-s3")
        while "vol-s3" not in names(st := ev.next(deadline)):
            pass
        assert ("vol", "vol-s3") in {(p, n["name"]) for p, n in flatten(st["trees"])}
    finally:
        ev.close()
        ctl(web, "snapshot", "delete", "vol-s3")


def test_a_failed_drive_shows(tmp_path):
    """A failed drive's used PSEGs show failed, or rebuilding while the rebuild runs;
    a rebuilt drive holds nothing any more."""
    port = free_port()
    d = Daemon(tmp_path / "state", drive_size="256M", extra=["--metrics", f"127.0.0.1:{port}"]).start()
    d.web = f"127.0.0.1:{port}"
    try:
        ctl(d, "lun", "create", "vol", "--size", "64M", "--thick")
        held = next(x for x in status(d)["drives"] if not x["quorum"] and any(c == USED for c, _ in x["runs"]))
        ctl(d, "drive", "fail", str(held["index"]))
        deadline = time.monotonic() + 30
        # /api/status is at most a tick old: the state from before the failure, until
        # the next build (a deadline bounds the wait)
        while (x := status(d)["drives"][held["index"]])["status"] == "ok":
            assert time.monotonic() < deadline, x
            time.sleep(0.05)
        while True:
            x = status(d)["drives"][held["index"]]
            assert x["status"] in ("failed", "rebuilding") and x["failed"]
            codes = {c for c, _ in x["runs"]}
            assert USED not in codes                  # failed, rebuilding or free
            if x["status"] == "rebuilding":
                assert REBUILDING in codes or FAILED in codes
            elif codes == {0}:
                break                                 # rebuilt: its old PSEGs are let go
            assert time.monotonic() < deadline, x
            time.sleep(0.05)
        healthy(d)
    finally:
        d.stop()


def test_concurrent_requests_share_one_build(tmp_path):
    """However many clients poll /api/status, the event loop builds the state at most
    once a tick (the daemon logs each build at DEBUG): N requests sent together
    cost one build, or one more per tick they took."""
    port = free_port()
    d = Daemon(tmp_path / "state", drive_size="256M",
               extra=["--metrics", f"127.0.0.1:{port}", "--log-level", "debug"]).start()
    d.web = f"127.0.0.1:{port}"
    n, bodies = 16, []
    go = threading.Barrier(n)

    def client():
        go.wait(timeout=10)
        bodies.append(get(d, "/api/status")[2])
    try:
        ctl(d, "lun", "create", "vol", "--size", "32M")
        threads = [threading.Thread(target=client) for _ in range(n)]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        took = time.monotonic() - began
        assert len(bodies) == n and len(set(bodies)) == 1 and b'"vol"' in bodies[0]
        builds = len(re.findall(r"status page state #\d+ built in", d.read_log()))
        assert 1 <= builds <= 1 + int(took / (TICK * 0.9)), (builds, took)
        healthy(d)
    finally:
        d.stop()
