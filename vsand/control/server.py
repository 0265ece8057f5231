"""Control socket server: frames in, schema check, handler, frame out."""

from __future__ import annotations

import asyncio
import errno
import logging
import os

import msgpack

from .schema import FRAME, MAX_FRAME, Warned, validate

log = logging.getLogger("vsand.control")


class ControlServer:
    def __init__(self, handlers):
        self.handlers = handlers    # object with a method per op: "lun.create" -> lun_create
        self.server = None

    async def listen(self, path: str) -> None:
        if os.path.exists(path):
            os.unlink(path)
        old = os.umask(0o177)        # the socket is created 0600: root's tool only
        try:
            self.server = await asyncio.start_unix_server(self._client, path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        log.info("control listening on %s", path)

    async def listen_socket(self, sock) -> None:
        self.server = await asyncio.start_unix_server(self._client, sock=sock)

    async def close(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readexactly(FRAME.size)
                except asyncio.IncompleteReadError:
                    return
                (n,) = FRAME.unpack(head)
                if n > MAX_FRAME:
                    return
                reply = await self._handle(await reader.readexactly(n))
                body = msgpack.packb(reply, use_bin_type=True)
                writer.write(FRAME.pack(len(body)) + body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _handle(self, raw: bytes) -> dict:
        try:
            req = msgpack.unpackb(raw, raw=False)
            op, args = req.get("op"), req.get("args", {})
        except Exception:
            return {"ok": False, "error": "malformed request", "errno": errno.EINVAL}
        bad = validate(op, args) if isinstance(op, str) else "op must be a string"
        if bad:
            return {"ok": False, "error": bad, "errno": errno.EINVAL}
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
            return {"ok": False, "error": getattr(e, "message", str(e)), "errno": code}
