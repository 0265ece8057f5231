"""The HTTP listener: one aiohttp application on the daemon's event loop.

``make_app`` is the one place that builds the application: /metrics here, the
status page's routes (status.py). ``WebListener`` serves it on the sockets
listeners.py bound before the pool was opened, so a port in use refused the
start in one line before anything was created.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..server.stats import Latency
from . import status
from .metrics import VsandCollector

log = logging.getLogger("vsand.web")

LAG_EVERY = 0.5     # seconds between looks at how late the event loop runs a timer

REGISTRY = web.AppKey("registry", CollectorRegistry)
LAG = web.AppKey("lag", object)


class LagProbe:
    """Event-loop lag: how much later than asked a timer callback runs. A loop busy
    with one long call (a big commit built on the loop, a slow control op) shows
    here as lag every NBD client felt."""

    def __init__(self):
        self.latency = Latency()
        self.last = 0.0
        self._handle = None
        self._due = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + LAG_EVERY
        self._handle = loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.last = max(0.0, now - self._due)
        self.latency.add(self.last)
        self._due = now + LAG_EVERY
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(daemon) -> web.Application:
    """The application of ``daemon`` (its ``pool``, ``nbd`` and ``tasks``, read at
    request time): GET /metrics in the Prometheus text format, and the status page."""
    app = web.Application()
    lag = LagProbe()
    registry = CollectorRegistry()
    registry.register(VsandCollector(daemon, lag))
    app[REGISTRY] = registry
    app[LAG] = lag

    async def probe(app):
        lag.start()
        yield
        lag.stop()

    app.cleanup_ctx.append(probe)
    app.router.add_get("/metrics", _metrics)
    status.add_routes(app, daemon)
    return app


def loopback(host: str) -> bool:
    """Whether a bound address is a loopback one (0.0.0.0 and :: are every interface)."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


class WebListener:
    """Serves ``make_app(daemon)`` on listening sockets bound already."""

    def __init__(self, daemon, socks: list[socket.socket]):
        self.daemon = daemon
        self.socks = socks
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        # shutdown_timeout: status page event streams stay open until the stop ends them
        self.runner = web.AppRunner(make_app(self.daemon), access_log=None, handle_signals=False,
                                    shutdown_timeout=5)
        await self.runner.setup()
        for s in self.socks:
            await web.SockSite(self.runner, s).start()
            host, port = s.getsockname()[:2]
            where = f"{f'[{host}]' if ':' in host else host}:{port}"
            log.info("metrics listening on http://%s/metrics, status page on http://%s/", where, where)
            if not loopback(host):
                log.warning("the metrics listener on %s is not on loopback: whoever reaches it reads "
                            "/metrics and the status page, with no authentication and no TLS on "
                            "this listener; keep it on 127.0.0.1 or put a proxy with access "
                            "control in front", where)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
