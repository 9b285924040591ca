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
from control.http import TOKEN, bearer_auth, errors_as_json, json_response
from control.openapi import OPENAPI
from proxy.admin import REGISTRY, health, metrics


async def openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


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
    app[TOKEN] = token or ""
    app[REGISTRY] = registry
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/openapi.json", openapi)
    add_flag_routes(app, store)
    return app
