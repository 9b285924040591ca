"""The control API application: health, metrics, flags, instances, rollback, OpenAPI.

Mutating calls need `Authorization: Bearer <token>` when a token is configured
(ABGATE_CONTROL_TOKEN). Errors are JSON `{"error": "..."}`: 400 bad input, 401 no or wrong
token, 404 unknown flag, 503 flag store unavailable (nothing written), 504 rollback not
confirmed by every instance in time.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web
from prometheus_client import CollectorRegistry

from config.flags import FlagStore
from control.flags_api import add_flag_routes
from control.http import TOKEN, ApiError, bearer_auth, errors_as_json, json_response
from control.openapi import OPENAPI
from control.reload import Reloader
from proxy.admin import REGISTRY, health, metrics

RELOADER = web.AppKey("reloader", Reloader)


async def openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


def _reloader(request: web.Request) -> Reloader:
    reloader = request.app.get(RELOADER)
    if reloader is None:
        raise ApiError(404, "this process has no data plane: config reload is served by "
                            "abgate run and abgate proxy")
    return reloader


async def config_status(request: web.Request) -> web.Response:
    return json_response(_reloader(request).status())


async def config_reload(request: web.Request) -> web.Response:
    outcome = await _reloader(request).reload("api")
    return json_response(outcome.as_json(), 200 if outcome.result == "success" else 400)


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


def create_control_app(store: FlagStore, registry: CollectorRegistry, token: str | None,
                       reloader: Reloader | None = None) -> web.Application:
    app = web.Application(middlewares=[errors_as_json, bearer_auth], client_max_size=1024**2)
    app[TOKEN] = token or ""
    app[REGISTRY] = registry
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/openapi.json", openapi)
    if reloader is not None:
        app[RELOADER] = reloader
    app.router.add_get("/api/config", config_status)
    app.router.add_post("/api/config/reload", config_reload)
    add_flag_routes(app, store)
    return app
