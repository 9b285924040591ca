"""The data-plane listener: aiohttp's low-level server, with its lifecycle made explicit.

start (bind, optionally SO_REUSEPORT so several workers share a port) -> serve -> on exit:
stop accepting, let in-flight requests finish for up to `shutdown_timeout`, then close.
aiohttp's own answers to malformed requests are replaced by abgate's small JSON errors.

What a hostile or broken client can hold is bounded here, per connection and with one timer
per connection (never per request), with nginx's defaults: a request head must arrive within
client_header_timeout of its first byte (408) and be at most max_header_size bytes in all
(431); an idle keep-alive connection closes after client_keepalive_timeout; beyond
max_connections a new client gets a 503 and is closed. Each refusal is counted and logged
once per burst.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from config.model import Listen, ProxySettings

log = logging.getLogger("abgate.proxy")
LINGER = 2.0  # seconds a refused client's bytes are read and dropped before the close
_REASON = {
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


@dataclass(slots=True)
class ClientLimits:
    """The listener's bounds and what they refused (read by the metrics collector)."""

    header_timeout: float
    max_header_size: int
    max_connections: int
    refused: dict[str, int]  # reason -> count
    logged: set[str]  # reasons logged since the last quiet moment

    def refuse(self, reason: str, detail: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if reason not in self.logged:
            self.logged.add(reason)
            log.warning(
                "refusing clients: %s (counted in abgate_client_refusals_total; "
                "logged once until it stops)",
                detail,
            )


def _answer(status: int, error: str) -> bytes:
    body = orjson.dumps({"error": error, "upstream": None, "request_id": None})
    return (
        f"HTTP/1.1 {status} {_REASON[status]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def _malformed(message: str | None) -> str:
    """aiohttp's description, up to where it would quote the request: a header may hold a
    secret (`Got more than 8190 bytes when reading: b'Bearer ...`)."""
    lines = (message or "").strip().splitlines()
    what = lines[0].split(":", 1)[0].strip() if lines else ""
    return f"malformed request: {what}" if what else "malformed request"


class JsonErrorHandler(RequestHandler):
    """aiohttp's per-connection protocol answering its own errors (malformed requests) in
    abgate's small JSON, logged in one line each, never with a traceback for a 4xx."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            error = "internal error"
        else:
            error = _malformed(message)
            log.info("%s from %s", error, request.remote)
            manager = self._manager
            if isinstance(manager, JsonErrorServer):
                manager.malformed += 1
        body = orjson.dumps({"error": error, "upstream": None, "request_id": None})
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """aiohttp's low-level server with `JsonErrorHandler` connections."""

    malformed = 0  # requests refused as malformed, for the metrics

    def __call__(self) -> RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorAppRunner(web.AppRunner):
    """An AppRunner (the control API, admin) whose connections answer errors in JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = JsonErrorServer  # same layout: only the connection class differs
        return server


class _ClientConnection(JsonErrorHandler):
    """aiohttp's per-connection protocol, plus the header timeout and total head size."""

    def __init__(self, manager: _Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = manager.limits
        self._head_started: float | None = None
        self._head_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._last_payload: StreamReader | None = None
        self._discarding = False  # refused, lingering before the close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_started = self._loop.time()  # a client that connects owes us a head
        self._arm_header_timer(self._head_started)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return  # refused: reading only so that closing sends no reset
        # Bytes after the last request's body is complete begin the next request head; the
        # body's own bytes are the body timeout's business, not this one's.
        payload = self._last_payload
        in_head = not self._upgraded and (payload is None or payload.is_eof())
        if in_head:
            if self._head_started is None:
                self._head_started = self._loop.time()
                self._head_bytes = 0
            self._head_bytes += len(data)
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._head_started = None  # a whole head arrived
            if self._messages:
                message, self._last_payload = self._messages[-1]
                if getattr(message, "version", HttpVersion11) < HttpVersion10:
                    # HTTP/0.9 has no status line to carry an answer (aiohttp would write
                    # `HTTP/0.9 200`): refused here, before it reaches an upstream.
                    self._messages.clear()
                    self._refuse(505, "HTTP/0.9 is not supported")
        elif in_head and self._head_bytes > self._limits.max_header_size:
            self._limits.refuse(
                "header_too_large", f"request heads over {self._limits.max_header_size} bytes"
            )
            self._refuse(431, f"request head over {self._limits.max_header_size} bytes")

    def _arm_header_timer(self, since: float) -> None:
        self._header_timer = self._loop.call_at(
            since + self._limits.header_timeout, self._on_header_timer
        )

    def _on_header_timer(self) -> None:
        self._header_timer = None
        started = self._head_started
        if self.transport is None:
            return
        if started is not None and self._current_request is None and not self._messages:
            if self._loop.time() - started >= self._limits.header_timeout:
                self._limits.refuse(
                    "header_timeout",
                    f"request heads not complete within {self._limits.header_timeout:g}s",
                )
                self._refuse(
                    408, f"no complete request head within {self._limits.header_timeout:g}s"
                )
                return
            self._arm_header_timer(started)
        else:
            self._arm_header_timer(self._loop.time())  # busy or idle: look again later

    def _refuse(self, status: int, error: str) -> None:
        """Answer and close, lingering as nginx does: closing at once while the client still
        sends would reset the connection, and a reset can make its kernel drop our answer
        unread. So: answer, half-close, discard what still comes for LINGER seconds."""
        transport = self.transport
        if transport is None or transport.is_closing() or self._discarding:
            return
        self._discarding = True
        transport.write(_answer(status, error))
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER, self.force_close)


class _Server(JsonErrorServer):
    def __init__(self, handler: Any, limits: ClientLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits

    def __call__(self) -> RequestHandler:
        return _ClientConnection(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        limits = self.limits
        if len(self._connections) >= limits.max_connections:
            limits.refuse(
                "max_connections",
                f"{limits.max_connections} client connections open (proxy.max_connections)",
            )
            transport.write(_answer(503, f"over {limits.max_connections} client connections"))
            transport.close()
        elif len(self._connections) < limits.max_connections // 2:
            limits.logged.discard("max_connections")  # quiet again: log the next burst
        super().connection_made(handler, transport)


def check_file_limit(needed: int) -> None:
    """Raise the soft limit on open files towards `needed` (up to the hard limit); warn when
    it stays below, since past it new clients are closed without an answer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < needed:
        log.warning(
            "the open-file limit is %d, below the %d that max_connections and the "
            "upstream pools may need: raise it (ulimit -n) or lower them",
            soft,
            needed,
        )


class HttpListener:
    """One listening socket serving `handler` with aiohttp's low-level server."""

    def __init__(
        self, handler: Any, listen: Listen, settings: ProxySettings, *, reuse_port: bool = False
    ) -> None:
        self._handler = handler
        self._listen = listen
        self._settings = settings
        self._reuse_port = reuse_port
        self._runner: web.ServerRunner | None = None
        self.port = listen.port
        self.limits = ClientLimits(
            settings.client_header_timeout,
            settings.max_header_size,
            settings.max_connections,
            {},
            set(),
        )

    async def __aenter__(self) -> HttpListener:
        settings = self._settings
        server = _Server(
            self._handler,
            self.limits,
            access_log=None,
            auto_decompress=False,
            max_field_size=16384,
            max_line_size=16384,
            keepalive_timeout=settings.client_keepalive_timeout,
        )
        runner = web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=settings.shutdown_timeout
        )
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(
                runner,
                self._listen.host,
                self._listen.port,
                reuse_port=self._reuse_port or None,
                backlog=1024,
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        return self

    @property
    def url(self) -> str:
        return Listen(self._listen.host, self.port).url

    @property
    def malformed(self) -> int:
        """Requests answered 400 as malformed by the server itself."""
        server = self._runner.server if self._runner is not None else None
        return server.malformed if isinstance(server, JsonErrorServer) else 0

    @property
    def connections(self) -> int:
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if isinstance(server, web.Server) else 0

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
