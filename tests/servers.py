"""Real servers for the tests, on ephemeral ports on 127.0.0.1: an echo upstream that reports
what it received, raw-socket peers that misbehave on purpose, and config builders."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import orjson
import yaml
from aiohttp import web

from abgate.config import Config, parse_config
from abgate.state.flags import FlagTable
from scripts.demo_agent import create_app

PEERS = web.AppKey("peers", set)


def echo_app() -> web.Application:
    """Answers with what it got: method, path, query, headers (in order), body digest."""
    app = web.Application(client_max_size=1024**3)
    app[PEERS] = set()

    async def echo(request: web.Request) -> web.StreamResponse:
        app[PEERS].add(request.transport.get_extra_info("peername") if request.transport else None)
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        path = request.path
        if path.startswith("/slow/"):
            await asyncio.sleep(float(path.rsplit("/", 1)[1]))
        if path.startswith("/status/"):
            return web.Response(status=int(path.rsplit("/", 1)[1]))
        if path == "/cookies":
            response = web.Response(text="cookies")
            response.headers.add("Set-Cookie", "a=1; Path=/")
            response.headers.add("Set-Cookie", "b=2; Path=/")
            return response
        if path == "/gzip":
            return web.Response(
                body=b"\x1f\x8b\x08\x00pretend-gzip",
                headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
            )
        if path == "/hop":
            return web.Response(
                text="hop",
                headers={
                    "Connection": "X-Secret",
                    "X-Secret": "1",
                    "Keep-Alive": "timeout=5",
                    "X-Kept": "yes",
                    "Proxy-Authenticate": "Basic",
                },
            )
        if path.startswith("/download/"):
            return await _download(request, int(path.rsplit("/", 1)[1]))
        payload = {
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_size": size,
            "body_sha256": digest.hexdigest(),
        }
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def _download(request: web.Request, size: int) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    block = b"x" * (1024 * 1024)
    remaining = size
    while remaining:
        piece = block[: min(len(block), remaining)]
        await response.write(piece)
        remaining -= len(piece)
    await response.write_eof()
    return response


@asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def demo_agents() -> AsyncIterator[dict[str, str]]:
    """The bundled demo agents: `control` (deterministic) and `treatment` (ml)."""
    async with (
        serve_app(create_app("deterministic")) as control,
        serve_app(create_app("ml", seed=1)) as treatment,
    ):
        yield {"control": control, "treatment": treatment}


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server running `handler` per connection; yields its URL and a connection count."""
    connections: list[int] = []
    tasks: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Read one request head (and a Content-Length body) from a raw connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return head, body


# Business outcomes the tests report through POST /api/outcomes.
TEST_METRICS = {
    "accuracy": {"type": "binary", "direction": "higher"},
    "satisfaction": {"type": "continuous", "direction": "higher"},
}


def make_config(
    upstreams: dict[str, str],
    *,
    percentage: float = 10,
    experiment: dict[str, Any] | None = None,
    routes: list[dict[str, Any]] | None = None,
    proxy: dict[str, Any] | None = None,
    upstream_options: dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
) -> Config:
    """A config on ephemeral ports. With upstreams `control` and `treatment`, an experiment
    `exp` splits the prefix /api/ between them."""
    document: dict[str, Any] = {
        "proxy": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "shutdown_timeout": "5s",
            "random_seed": 7,
            **(proxy or {}),
        },
        "control": {"listen": "127.0.0.1:0"},
        "flags": {"state_file": None, **(flags or {})},
        "upstreams": {
            name: {"url": url, **(upstream_options or {})} for name, url in upstreams.items()
        },
        "routes": routes or [{"prefix": "/", "experiment": "exp"}],
        "experiments": {
            "exp": {
                "control": "control",
                "treatment": "treatment",
                "sticky": [{"header": "X-User-Id"}],
                "percentage": percentage,
                "metrics": TEST_METRICS,
                **(experiment or {}),
            }
        },
    }
    if "treatment" not in upstreams:
        document.pop("experiments")
    return parse_config(yaml.safe_dump(document, sort_keys=False), "<test>")


async def raw_request(url: str, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send raw bytes to a server and read until it closes (send `Connection: close`)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read(-1)
    finally:
        writer.close()


def free_port() -> int:
    """A port for a process that binds it later (Redis, Prometheus, the demo stack): bound,
    then released. Where nothing may answer, use `refused_port`; where abgate binds, port 0."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(condition: Callable[[], object], timeout: float = 60.0) -> None:
    """Poll for state that has no event to await: Redis contents, counters moved by load
    tasks, a peer that went away. Where an event exists, tests await it instead."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - see the docstring
            await asyncio.sleep(0.01)


async def tables_reach(
    tables: list[FlagTable], name: str, version: int, timeout: float = 20.0
) -> None:
    """Wait until every table holds `version` of flag `name`, woken by the tables' own
    change notifications."""
    changed = asyncio.Event()
    unsubscribe = [table.subscribe(lambda _flag: changed.set()) for table in tables]
    try:
        async with asyncio.timeout(timeout):
            while not all(table.get(name).version >= version for table in tables):
                await changed.wait()
                changed.clear()
    finally:
        for stop in unsubscribe:
            stop()


@contextmanager
def refused_port() -> Iterator[int]:
    """A port held bound but not listening: connections to it are refused, and no other
    process can take it meanwhile (unlike a port found free and released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
