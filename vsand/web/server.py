"""The HTTP listener (``--metrics HOST:PORT``): an aiohttp application on the
daemon's event loop. Minimal: it serves the status page (status.py)."""

from __future__ import annotations

import logging

from aiohttp import web

from ..listeners import ListenError
from . import status

log = logging.getLogger("vsand.web")


def make_app(daemon) -> web.Application:
    app = web.Application()
    status.add_routes(app, daemon)
    return app


async def start(daemon, address: str) -> web.AppRunner:
    """Serves ``make_app(daemon)`` on ``address`` (HOST:PORT) until ``cleanup()``."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    runner = web.AppRunner(make_app(daemon), access_log=None, shutdown_timeout=5)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, int(port)).start()
    except OSError as e:
        await runner.cleanup()
        raise ListenError(f"cannot listen on {address}: {(e.strerror or str(e)).lower()}") from None
    log.info("status page on http://%s/", address)
    return runner
