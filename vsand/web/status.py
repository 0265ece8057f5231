"""The live status page (issue 14 item 2): routes on the daemon's HTTP listener.

    GET /              the page (status.html, status.js, status.css: no build step,
                       nothing from elsewhere)
    GET /api/status    the JSON of view.py, at most a second old
    GET /events        server-sent events: that JSON whenever it changed, looked at
                       about once a second; a "ping" event every few seconds
                       otherwise, so the page can tell a quiet daemon from a dead one

Read-only: only GET (and HEAD, but for the stream) is routed, so any other method
gets 405; nothing here calls anything that changes the pool. Everything runs on the
daemon's event loop between NBD requests: the JSON is built at most once per
tick for all open event streams and /api/status requests together (however many
clients poll, the loop pays one build a second), and only while someone watches.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import time

from aiohttp import web

from . import view

log = logging.getLogger("vsand.web")

HERE = os.path.dirname(os.path.abspath(__file__))
ASSETS = {"/": ("status.html", "text/html"), "/status.js": ("status.js", "text/javascript"),
          "/status.css": ("status.css", "text/css")}
TICK = 1.0            # seconds between looks at the state for the event streams
PING = 5.0            # seconds of silence after which a stream says it is alive
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
           # the page loads only its own files, and no other site may frame it
           "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'"}


def add_routes(app: web.Application, daemon) -> None:
    """The page's routes on ``app``; ``daemon`` is read when a request comes (its
    pool and tasks exist once it serves)."""
    feed = Feed(daemon)
    for path, (name, kind) in ASSETS.items():
        app.router.add_get(path, _asset(name, kind))
    app.router.add_get("/api/status", _guard(feed.status))
    app.router.add_get("/events", _guard(feed.events), allow_head=False)   # a stream has no head
    app.on_shutdown.append(feed.close)


def _asset(name: str, kind: str):
    # read once: no disk I/O on the loop, and a package upgraded under a running
    # daemon does not serve a page newer than the JSON it reads
    with open(os.path.join(HERE, name), "rb") as f:
        body = f.read()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=HEADERS)
    return _guard(serve)


def _guard(handler):
    """Refuses a request whose Host is a name other than localhost: the listener is
    on loopback, and a web page that rebinds its own DNS name to 127.0.0.1 must not
    read the pool's state through the visitor's browser."""
    async def guarded(request: web.Request):
        host = request.url.host or ""
        if host != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise web.HTTPMisdirectedRequest(
                    text=f"the status page answers to an IP address or localhost, not {host!r}\n")
        return await handler(request)
    return guarded


class Feed:
    """The state as JSON text, shared by every event stream of one tick."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.closing = asyncio.Event()
        self.text = ""
        self.at = float("-inf")
        self.builds = 0                     # how many times the state was built (logged)

    def build(self) -> str:
        d = self.daemon
        if d.pool is None or d.tasks is None:
            raise web.HTTPServiceUnavailable(text="vsand is starting\n")
        began = time.perf_counter()
        text = json.dumps(view.build(d), separators=(",", ":"), default=str)
        self.builds += 1
        log.debug("status page state #%d built in %.1f ms (%d bytes)", self.builds,
                  (time.perf_counter() - began) * 1e3, len(text))
        return text

    def tick(self) -> str:
        """The JSON, built again when the last build is a tick old."""
        now = time.monotonic()
        if now - self.at >= TICK * 0.9:
            self.text, self.at = self.build(), now
        return self.text

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(text=self.tick(), content_type="application/json", headers=HEADERS)

    async def events(self, request: web.Request) -> web.StreamResponse:
        first = self.tick()                 # a daemon still starting answers 503 here
        resp = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        last, quiet = None, 0.0
        try:
            text = first
            while not self.closing.is_set():
                if text != last:
                    await resp.write(b"retry: 2000\ndata: " + text.encode() + b"\n\n")
                    last, quiet = text, 0.0
                elif quiet >= PING:
                    await resp.write(b"event: ping\ndata: \n\n")
                    quiet = 0.0
                try:
                    await asyncio.wait_for(self.closing.wait(), TICK)
                except asyncio.TimeoutError:
                    pass
                quiet += TICK
                text = self.tick()
        except ConnectionResetError:
            pass                            # the browser went away
        except web.HTTPException as e:      # the daemon began stopping under the stream
            log.debug("status stream ends: %s", e.text)
        return resp

    async def close(self, app: web.Application) -> None:
        """The listener shuts down: open streams end now, not at a timeout."""
        self.closing.set()
