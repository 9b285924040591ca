"""The local live-state channel: how `abgate run`'s two processes, its control process and its
data plane, talk on one machine.

A Unix domain socket in a directory only this user can open (created by whoever starts the
pair); frames are a 4-byte big-endian length and one orjson object. Every message names its
`op`. A request carries an `id` and gets exactly one reply, `{"op": "reply", "id": ...,
"result": ...}` or `{..., "error": "...", "kind": "not_found" | "failed"}`; a message without
an id is a notice and gets none. Both ends may send either. Messages are handled in the order
they arrive: a notice at once (synchronously), a request in a task of its own, started in
order, so a request sent after a notice sees what the notice changed.

What goes over it is in state/live_server.py (the control process's end) and
state/live_link.py (the data plane's end). A peer that is gone is StoreUnavailable, the
live-state layer's one error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from abgate.config.errors import AbgateError
from abgate.state.errors import StoreUnavailable

log = logging.getLogger("abgate.channel")
MAX_FRAME = 64 * 1024 * 1024  # a metrics exposition or a measurement batch is far smaller
REQUEST_TIMEOUT = 10.0
_LENGTH = struct.Struct("!I")

RequestHandler = Callable[[dict[str, Any]], Awaitable[Any]]
NoticeHandler = Callable[[dict[str, Any]], None]


class RemoteError(AbgateError):
    """The other end answered a request with an error; `kind` is "not_found" (a KeyError
    there: an unknown name) or "failed"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Peer:
    """One end of one connection."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        name: str,
        requests: Mapping[str, RequestHandler] | None = None,
        notices: Mapping[str, NoticeHandler] | None = None,
    ) -> None:
        self.name = name  # for messages: "the data plane", "the control process"
        self._reader = reader
        self._writer = writer
        self._requests = dict(requests or {})
        self._notices = dict(notices or {})
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._handling: set[asyncio.Task[None]] = set()
        self.open = True

    def on_request(self, op: str, handler: RequestHandler) -> None:
        self._requests[op] = handler

    def on_notice(self, op: str, handler: NoticeHandler) -> None:
        self._notices[op] = handler

    def send(self, op: str, **fields: Any) -> None:
        """A notice (or a reply), queued in order with everything else sent; no await."""
        if not self.open or self._writer.is_closing():
            raise StoreUnavailable(f"{self.name} is not connected")
        body = orjson.dumps({"op": op, **fields}, option=orjson.OPT_NON_STR_KEYS)
        self._writer.writelines((_LENGTH.pack(len(body)), body))

    async def request(self, op: str, *, within: float = REQUEST_TIMEOUT, **fields: Any) -> Any:
        """Send a request and wait for its reply; StoreUnavailable when the other end is gone
        or silent past `within` seconds, RemoteError when it answered with an error."""
        self._next_id += 1
        ident = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            self.send(op, id=ident, **fields)
            async with asyncio.timeout(within):
                return await future
        except TimeoutError:
            raise StoreUnavailable(f"{self.name} did not answer {op} within {within:g}s") from None
        finally:
            self._pending.pop(ident, None)

    async def serve(self) -> None:
        """Read and handle messages until the connection ends; then fail what waits on it."""
        try:
            while True:
                (length,) = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))
                if length > MAX_FRAME:
                    log.error("%s sent a frame of %d bytes; closing the channel", self.name, length)
                    return
                self._dispatch(orjson.loads(await self._reader.readexactly(length)))
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the other end closed
        except orjson.JSONDecodeError as exc:
            log.error("%s sent a malformed frame (%s); closing the channel", self.name, exc)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if not self.open:
            return
        self.open = False
        gone = StoreUnavailable(f"{self.name} is not connected")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(gone)
        handling, self._handling = set(self._handling), set()
        for task in handling:
            task.cancel()
        await asyncio.gather(*handling, return_exceptions=True)
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    def _dispatch(self, message: dict[str, Any]) -> None:
        op, ident = message.get("op"), message.get("id")
        if op == "reply":
            future = self._pending.get(ident) if isinstance(ident, int) else None
            if future is not None and not future.done():
                if "error" in message:
                    future.set_exception(
                        RemoteError(str(message.get("kind")), str(message["error"]))
                    )
                else:
                    future.set_result(message.get("result"))
            return
        if ident is None:
            notice = self._notices.get(str(op))
            if notice is None:
                log.warning("%s sent an unknown notice %r; ignored", self.name, op)
                return
            notice(message)
            return
        task = asyncio.create_task(self._answer(str(op), ident, message), name=f"abgate-{op}")
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    async def _answer(self, op: str, ident: Any, message: dict[str, Any]) -> None:
        handler = self._requests.get(op)
        try:
            if handler is None:
                raise RemoteError("failed", f"unknown request {op!r}")
            result = await handler(message)
        except KeyError as exc:
            reply = {"error": f"unknown {exc.args[0] if exc.args else 'name'}", "kind": "not_found"}
        except Exception as exc:  # the request fails, the channel lives on
            log.error("%s: request %s failed", self.name, op, exc_info=exc)
            reply = {"error": f"{type(exc).__name__}: {exc}", "kind": "failed"}
        else:
            reply = {"result": result}
        with contextlib.suppress(StoreUnavailable):  # gone meanwhile: nobody to answer
            self.send("reply", id=ident, **reply)
