"""The data-plane listener: aiohttp's low-level server, with its lifecycle made explicit.

start (bind, optionally SO_REUSEPORT so several workers share a port) -> serve -> on exit:
stop accepting, let in-flight requests finish for up to `shutdown_timeout`, then close.
aiohttp's own answers to malformed requests are replaced by abgate's small JSON errors.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from config.model import Listen

log = logging.getLogger("abgate.proxy")


class _JsonErrorRequestHandler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        else:
            log.debug("bad request from %s: %s", request.remote, message or exc)
        error = "malformed request" if status == 400 else (message or "internal error")
        if status == 400 and message:
            error = f"malformed request: {message.strip().splitlines()[0]}"
        body = orjson.dumps({"error": error, "upstream": None, "request_id": None})
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class HttpListener:
    """One listening socket serving `handler` with aiohttp's low-level server."""

    def __init__(self, handler: Any, listen: Listen, *, reuse_port: bool = False,
                 shutdown_timeout: float = 10.0) -> None:
        self._handler = handler
        self._listen = listen
        self._reuse_port = reuse_port
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.ServerRunner | None = None
        self.port = listen.port

    async def __aenter__(self) -> HttpListener:
        server = _Server(self._handler, access_log=None, auto_decompress=False,
                         max_field_size=16384, max_line_size=16384)
        runner = web.ServerRunner(server, handle_signals=False,
                                  shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, self._listen.host, self._listen.port,
                               reuse_port=self._reuse_port or None, backlog=1024)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        return self

    @property
    def url(self) -> str:
        return Listen(self._listen.host, self.port).url

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
