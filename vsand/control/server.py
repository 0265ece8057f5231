"""Control socket server: frames in, schema check, handler, frame out.

What a client sends never costs the daemon more than it can afford: a request
longer than MAX_REQUEST is refused from its length alone (nothing is read or
reserved for it), a request that does not arrive whole within ``timeout`` seconds
is dropped, and past ``max_connections`` a new connection gets an error reply and
is closed. Every operation that changes something is audited (audit.py)."""

from __future__ import annotations

import asyncio
import errno
import logging

import msgpack

from .audit import Peer, audit
from .schema import FRAME, MAX_REQUEST, Warned, mutating, validate

log = logging.getLogger("vsand.control")

TIMEOUT = 10.0          # seconds for a whole request to arrive (config control_timeout)
MAX_CONNECTIONS = 64    # control connections at once (config control_max_connections)


class ControlServer:
    def __init__(self, handlers, timeout: float = TIMEOUT, max_connections: int = MAX_CONNECTIONS):
        self.handlers = handlers    # object with a method per op: "lun.create" -> lun_create
        self.server = None
        self.timeout = timeout
        self.max_connections = max_connections
        self.open = 0               # connections being served

    async def listen_socket(self, sock) -> None:
        self.server = await asyncio.start_unix_server(self._client, sock=sock)

    async def close(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            if self.open > self.max_connections:
                if self.open == self.max_connections + 1:      # once per crossing, not per refusal
                    log.warning("control: more than control_max_connections (%d) connections at "
                                "once: refusing new ones", self.max_connections)
                await _send(writer, _error(f"the daemon serves at most {self.max_connections} "
                                           "control connections at once; try again", errno.EBUSY))
                return
            peer = Peer.of(writer)
            while True:
                raw = await self._request(reader, writer, peer)
                if raw is None:
                    return
                reply = await self._handle(raw, peer)
                async with asyncio.timeout(self.timeout):      # a client that does not read its reply
                    await _send(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def _request(self, reader, writer, peer) -> bytes | None:
        """The next request's bytes; None when the connection is to end."""
        started = False        # a byte of the request came: silence is then a stall, not idleness
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    head = await reader.readexactly(1)
                    started = True
                    head += await reader.readexactly(FRAME.size - 1)
                except asyncio.IncompleteReadError as e:
                    if e.partial or started:
                        log.info("control: %s closed the connection inside a frame header", peer)
                    return None
                (n,) = FRAME.unpack(head)
                if n > MAX_REQUEST:
                    log.warning("control: %s announced a request of %d bytes (limit %d): refused",
                                peer, n, MAX_REQUEST)
                    await _send(writer, _error(f"request of {n} bytes is longer than the "
                                               f"{MAX_REQUEST} bytes any request needs", errno.EMSGSIZE))
                    return None
                return await reader.readexactly(n)
        except TimeoutError:
            if started:
                log.warning("control: %s sent no whole request within %g s: closing it", peer, self.timeout)
            else:
                log.debug("control: %s idle for %g s: closing it", peer, self.timeout)
            return None

    async def _handle(self, raw: bytes, peer: Peer) -> dict:
        try:
            req = msgpack.unpackb(raw, raw=False)
            op, args = req.get("op"), req.get("args", {})
        except Exception:         # msgpack raises many types for bad input; req may not be a map
            return _error("malformed request", errno.EINVAL)
        bad = validate(op, args) if isinstance(op, str) else "op must be a string"
        if bad:
            if isinstance(op, str) and mutating(op):
                audit(peer, op, args if isinstance(args, dict) else {}, f"refused: {bad}")
            return _error(bad, errno.EINVAL)
        reply = await self._run(op, args)
        if mutating(op):
            audit(peer, op, args, "ok" if reply["ok"] else f"refused: {reply['error']}")
        return reply

    async def _run(self, op: str, args: dict) -> dict:
        fn = getattr(self.handlers, op.replace(".", "_"))
        try:
            result = fn(**args)
            if asyncio.iscoroutine(result):
                result = await result
            if isinstance(result, Warned):
                return {"ok": True, "result": result.result, "warnings": result.warnings}
            return {"ok": True, "result": result}
        except Exception as e:
            code = getattr(e, "errno", None) or errno.EIO
            if not hasattr(e, "message"):
                log.exception("control %s failed", op)
            return _error(getattr(e, "message", str(e)), code)


def _error(message: str, code: int) -> dict:
    return {"ok": False, "error": message, "errno": code}


async def _send(writer: asyncio.StreamWriter, reply: dict) -> None:
    try:
        body = msgpack.packb(reply, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:      # a handler bug: say so, live on
        log.error("control: cannot encode a reply: %s", e)
        body = msgpack.packb(_error(f"internal error: cannot encode the reply ({e})", errno.EIO))
    writer.write(FRAME.pack(len(body)) + body)
    await writer.drain()
