"""What every control API handler shares: JSON errors, JSON bodies, bearer auth."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from control.stats_worker import StatsWorker

log = logging.getLogger("abgate.control")
TOKEN = web.AppKey("token", str)
# The statistics worker (scipy) is imported only by processes that evaluate statistics.
WORKER: web.AppKey[StatsWorker] = web.AppKey("stats_worker")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def json_object(request: web.Request, *, allowed: set[str]) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)} "
                            f"(expected: {', '.join(sorted(allowed))})")
    return body


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response({"error": exc.message}, exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = json_response({"error": exc.reason}, exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:  # a bug: still JSON, and the server goes on
        log.exception("control API: %s %s failed", request.method, request.path)
        return json_response({"error": f"internal error: {type(exc).__name__}"}, 500)


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mutating calls need the token when one is configured; compared in constant time."""
    token = request.app[TOKEN]
    if token and request.method not in ("GET", "HEAD", "OPTIONS"):
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
            raise ApiError(401, "missing or wrong bearer token")
    return await handler(request)
