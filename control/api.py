"""The control API: health, metrics, and the flags that set each experiment's percentage.

Mutating calls need `Authorization: Bearer <token>` when a token is configured
(ABGATE_CONTROL_TOKEN); tokens are compared in constant time. Errors are JSON:
`{"error": "..."}` with 400 (bad input), 401 (no or wrong token) or 404 (unknown flag).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from config.fields import parse_percentage
from config.flags import FlagStore, UnknownFlag
from proxy.admin import REGISTRY, health, metrics

log = logging.getLogger("abgate.control")

STORE = web.AppKey("store", FlagStore)
TOKEN = web.AppKey("token", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response({"error": exc.message}, exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response({"error": exc.reason}, exc.status)


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[TOKEN]
    if token and request.method not in ("GET", "HEAD", "OPTIONS"):
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
            raise ApiError(401, "missing or wrong bearer token")
    return await handler(request)


async def list_flags(request: web.Request) -> web.Response:
    store = request.app[STORE]
    return json_response({"flags": [flag.as_json() for flag in store.table.all()]})


async def get_flag(request: web.Request) -> web.Response:
    store = request.app[STORE]
    name = request.match_info["name"]
    try:
        return json_response(store.table.get(name).as_json())
    except UnknownFlag:
        raise ApiError(404, f"unknown flag {name!r}") from None


async def set_flag(request: web.Request) -> web.Response:
    store = request.app[STORE]
    name = request.match_info["name"]
    if name not in store.table:
        raise ApiError(404, f"unknown flag {name!r}")
    body = await _json_object(request, allowed={"percentage", "reason"})
    if "percentage" not in body:
        raise ApiError(400, "percentage: required (a number from 0 to 100)")
    problems: list[str] = []
    basis_points = parse_percentage(body["percentage"], problems.append)
    if basis_points is None:
        raise ApiError(400, f"percentage: {problems[0]}")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 1000:
        raise ApiError(400, "reason: expected a string of at most 1000 characters")
    flag = await store.set_percentage(name, basis_points, by=_caller(request), reason=reason)
    log.info("flag %s set to %s%% (version %d) by %s: %s", name, flag.percentage,
             flag.version, flag.updated_by, reason or "-")
    return json_response(flag.as_json())


async def _json_object(request: web.Request, *, allowed: set[str]) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)} "
                            f"(expected: {', '.join(sorted(allowed))})")
    return body


def _caller(request: web.Request) -> str:
    return request.headers.get("X-ABGate-Actor") or f"api@{request.remote or 'unknown'}"


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve the control API beyond loopback without a token."""
    if token:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(f"the control API would listen on {host}, which is not loopback, "
                         "without a token: set ABGATE_CONTROL_TOKEN")


def create_control_app(store: FlagStore, registry: CollectorRegistry,
                       token: str | None) -> web.Application:
    app = web.Application(middlewares=[errors_as_json, bearer_auth], client_max_size=1024**2)
    app[STORE] = store
    app[TOKEN] = token or ""
    app[REGISTRY] = registry
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/flags", list_flags)
    app.router.add_get("/api/flags/{name}", get_flag)
    app.router.add_post("/api/flags/{name}", set_flag)
    return app
