"""The control page: `GET /ui` (and `/` redirects there) serves one self-contained HTML file
(control/ui/index.html: inline CSS and JS, no CDN, no fonts, no build step) that drives the
same control API as the CLI. Its writes carry the token the operator entered (kept in the
browser session only) and pass the same-origin and JSON-only guards as any other write."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

PAGE = Path(__file__).parent / "ui" / "index.html"
# The page loads nothing from elsewhere; say so to the browser too.
_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


async def page(request: web.Request) -> web.Response:
    return web.Response(
        body=PAGE.read_bytes(),
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": _POLICY,
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-cache",
        },
    )


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui")


def add_ui_routes(app: web.Application) -> None:
    app.router.add_get("/ui", page)
    app.router.add_get("/", root)
