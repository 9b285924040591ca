"""`JsonErrorAppRunner`: aiohttp's runner for the control API and the admin app, whose own
answers to malformed requests are abgate's small JSON errors (the data plane's listener,
proxy/protocol.py, answers its own)."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = logging.getLogger("abgate.proxy")


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
