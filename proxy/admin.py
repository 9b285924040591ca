"""Admin endpoints every data-plane process can serve: liveness and Prometheus metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

REGISTRY = web.AppKey("registry", CollectorRegistry)


async def health(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_admin_app(registry: CollectorRegistry) -> web.Application:
    app = web.Application()
    app[REGISTRY] = registry
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app
