"""The control page: `GET /ui` (and `/` redirects there) serves one HTML file
(control/ui/index.html: inline CSS, no CDN, no fonts, no build step) and its script
(`GET /ui/app.js`, control/ui/app.js; its charts `GET /ui/charts.js`) that drives the same
control API as the CLI. Its writes carry the token the operator entered (kept in the browser
session only) and pass the same-origin and JSON-only guards as any other write. The scripts
are files of their own so the Content-Security-Policy allows no inline script: a value
injected into the page cannot run."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

PAGE = Path(__file__).parent / "ui" / "index.html"
SCRIPT = Path(__file__).parent / "ui" / "app.js"
CHARTS = Path(__file__).parent / "ui" / "charts.js"  # plain SVG charts, no library
# The page loads nothing from elsewhere, and runs no inline script; say so to the browser.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


async def page(request: web.Request) -> web.Response:
    return web.Response(
        body=PAGE.read_bytes(), content_type="text/html", charset="utf-8", headers=_HEADERS
    )


async def script(request: web.Request) -> web.Response:
    path = CHARTS if request.path.endswith("/charts.js") else SCRIPT
    return web.Response(
        body=path.read_bytes(),
        content_type="text/javascript",
        charset="utf-8",
        headers=_HEADERS,
    )


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui")


def add_ui_routes(app: web.Application) -> None:
    app.router.add_get("/ui", page)
    app.router.add_get("/ui/app.js", script)
    app.router.add_get("/ui/charts.js", script)
    app.router.add_get("/", root)
