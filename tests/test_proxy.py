"""Transparent proxying on real servers: what passes through unchanged, what changes, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import ClientSession
from yarl import URL

from abgate.control.serve import Embedded, embedded
from tests.servers import (
    PEERS,
    echo_app,
    make_config,
    raw_request,
    raw_server,
    read_request,
    refused_port,
    serve_app,
)


@asynccontextmanager
async def proxy(upstreams: dict[str, str], **options: Any) -> AsyncIterator[Embedded]:
    if "treatment" not in upstreams and "routes" not in options:
        options["routes"] = [{"prefix": "/", "upstream": "control"}]
    async with embedded(make_config(upstreams, **options)) as running:
        yield running


@asynccontextmanager
async def echo_proxy(**options: Any) -> AsyncIterator[tuple[Embedded, Any]]:
    app = echo_app()
    async with serve_app(app) as url, proxy({"control": url}, **options) as running:
        yield running, app


def header_values(payload: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in payload["headers"] if k.lower() == name.lower()]


async def test_request_passes_through_unchanged(session: ClientSession) -> None:
    async with echo_proxy() as (running, _):
        body = bytes(range(256)) * 40
        headers = [
            ("X-Custom", "one"),
            ("X-Custom", "two"),
            ("Content-Type", "app/x"),
            ("X-Forwarded-For", "10.1.2.3"),
            ("X-Request-Id", "req-1"),
            ("Accept-Encoding", "gzip"),
        ]
        target = URL(f"{running.proxy_url}/a/b%20c?x=1&y=%2F&x=2", encoded=True)
        async with session.put(target, data=body, headers=headers) as response:
            assert response.status == 200
            payload = orjson.loads(await response.read())
            assert response.headers["X-Request-Id"] == "req-1"
            assert response.headers["Via"] == "1.1 abgate"
            assert "X-ABGate-Arm" not in response.headers  # no experiment on this route
    assert payload["method"] == "PUT"
    assert payload["path_qs"] == "/a/b%20c?x=1&y=%2F&x=2"
    assert payload["body_size"] == len(body)
    import hashlib

    assert payload["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert header_values(payload, "X-Custom") == ["one", "two"]
    assert header_values(payload, "Content-Type") == ["app/x"]
    assert header_values(payload, "Accept-Encoding") == ["gzip"]
    assert header_values(payload, "X-Forwarded-For") == ["10.1.2.3, 127.0.0.1"]
    assert header_values(payload, "X-Forwarded-Proto") == ["http"]
    assert header_values(payload, "X-Forwarded-Host") == header_values(payload, "Host")
    assert header_values(payload, "Via") == ["1.1 abgate"]
    assert header_values(payload, "X-Request-Id") == ["req-1"]


async def test_request_id_generated_and_forwarded_headers_kept(session: ClientSession) -> None:
    async with (
        echo_proxy() as (running, _),
        session.get(
            f"{running.proxy_url}/x",
            headers={
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "edge.example",
                "Via": "1.1 edge",
            },
        ) as response,
    ):
        payload = orjson.loads(await response.read())
        generated = response.headers["X-Request-Id"]
    assert header_values(payload, "X-Request-Id") == [generated]
    assert header_values(payload, "X-Forwarded-Proto") == ["https"]
    assert header_values(payload, "X-Forwarded-Host") == ["edge.example"]
    assert header_values(payload, "Via") == ["1.1 edge, 1.1 abgate"]


async def test_hop_by_hop_request_headers_are_removed() -> None:
    async with echo_proxy() as (running, _):
        raw = (
            b"GET /hop-request HTTP/1.1\r\nHost: svc\r\n"
            b"Connection: close, X-Named-Hop\r\nX-Named-Hop: secret\r\n"
            b"Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\n"
            b"Proxy-Authorization: Basic Zm9v\r\nProxy-Connection: keep-alive\r\n"
            b"Trailer: X-T\r\nX-End-To-End: kept\r\n\r\n"
        )
        answer = await raw_request(running.proxy_url, raw)
    payload = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
    names = {name.lower() for name, _ in payload["headers"]}
    for hop in (
        "x-named-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "trailer",
    ):
        assert hop not in names, hop
    assert header_values(payload, "X-End-To-End") == ["kept"]
    assert header_values(payload, "Host") == ["svc"]


async def test_response_headers_and_body_come_back_unchanged(session: ClientSession) -> None:
    async with echo_proxy() as (running, _):
        async with session.get(f"{running.proxy_url}/hop") as response:
            assert response.headers.get("X-Kept") == "yes"
            for hop in ("X-Secret", "Keep-Alive", "Proxy-Authenticate"):
                assert hop not in response.headers, hop
        async with session.get(f"{running.proxy_url}/cookies") as response:
            assert response.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
        async with session.get(f"{running.proxy_url}/gzip") as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert await response.read() == b"\x1f\x8b\x08\x00pretend-gzip"  # not decoded
        async with session.get(f"{running.proxy_url}/status/418") as response:
            assert response.status == 418
        async with session.get(f"{running.proxy_url}/status/204") as response:
            assert response.status == 204
            assert await response.read() == b""
        async with session.head(f"{running.proxy_url}/download/5000") as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == "5000"
        async with session.get(f"{running.proxy_url}/download/5000") as response:
            assert await response.read() == b"x" * 5000


async def test_chunked_request_bodies(session: ClientSession) -> None:
    async def pieces(count: int, size: int) -> AsyncIterator[bytes]:
        for index in range(count):
            yield bytes([index % 256]) * size

    async with echo_proxy(proxy={"buffer_body_size": "64KiB"}) as (running, _):
        for count, size in ((3, 1000), (40, 32 * 1024)):  # buffered, then streamed chunked
            expected = b"".join(bytes([i % 256]) * size for i in range(count))
            async with session.post(
                f"{running.proxy_url}/up", data=pieces(count, size)
            ) as response:
                payload = orjson.loads(await response.read())
            import hashlib

            assert payload["body_size"] == len(expected)
            assert payload["body_sha256"] == hashlib.sha256(expected).hexdigest()


async def test_keep_alive_pool_is_reused(session: ClientSession) -> None:
    async with echo_proxy() as (running, app):
        for _ in range(30):
            async with session.get(f"{running.proxy_url}/x") as response:
                assert response.status == 200
    assert len(app[PEERS]) == 1  # thirty sequential requests, one upstream connection


async def test_pooled_connection_closed_by_upstream_is_retried(session: ClientSession) -> None:
    """The upstream keeps each connection for one exchange, then closes it as the next request
    arrives (the idle keep-alive race). Clients must never see it."""

    async def one_answer_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request arrives ... and is dropped
        writer.transport.abort()

    async with (
        raw_server(one_answer_per_connection) as (url, connections),
        proxy({"control": url}) as running,
    ):
        statuses = []
        for _ in range(10):
            async with session.post(f"{running.proxy_url}/d", data=b"{}") as response:
                statuses.append(response.status)
                assert await response.read() == b"ok"
        async with session.get(f"{running.control_url}/metrics") as response:
            metrics = await response.text()
    assert statuses == [200] * 10
    assert len(connections) >= 10
    retries = [
        line
        for line in metrics.splitlines()
        if line.startswith('abgate_upstream_stale_retries_total{upstream="control"}')
    ]
    assert retries
    assert float(retries[0].split()[-1]) >= 1


async def test_upstream_down_is_502(session: ClientSession) -> None:
    with refused_port() as port:
        payload = await _down(session, f"http://127.0.0.1:{port}")
    assert payload["upstream"] == "control"
    assert payload["request_id"] == "r-502"
    assert payload["error"].startswith("connect failed")


async def _down(session: ClientSession, url: str) -> dict[str, Any]:
    async with (
        proxy({"control": url}) as running,
        session.get(f"{running.proxy_url}/x", headers={"X-Request-Id": "r-502"}) as response,
    ):
        assert response.status == 502
        return await response.json()  # type: ignore[no-any-return]


async def test_slow_upstream_is_504(session: ClientSession) -> None:
    async with echo_proxy(upstream_options={"read_timeout": "300ms"}) as (running, _):
        async with session.get(f"{running.proxy_url}/slow/3") as response:
            assert response.status == 504
            payload = orjson.loads(await response.read())
        assert payload["error"] == "no response head within 0.3s"
        async with session.get(f"{running.proxy_url}/fast") as response:
            assert response.status == 200  # the proxy carries on


async def test_body_over_limit_is_413(session: ClientSession) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"z" * 512

    async with echo_proxy(proxy={"max_body_size": "2KiB", "buffer_body_size": "1KiB"}) as (
        running,
        _,
    ):
        async with session.post(f"{running.proxy_url}/x", data=b"z" * 4096) as response:
            assert response.status == 413
            assert orjson.loads(await response.read())["upstream"] == "control"
        async with session.post(f"{running.proxy_url}/x", data=chunks()) as response:
            assert response.status == 413
        async with session.post(f"{running.proxy_url}/x", data=b"z" * 2048) as response:
            assert response.status == 200


async def test_malformed_request_is_400_json() -> None:
    async with echo_proxy() as (running, _):
        answer = await raw_request(running.proxy_url, b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n")
        assert answer.split(b" ", 2)[1] == b"400"
        error = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert error == "malformed request: Invalid header token"
        answer = await raw_request(running.proxy_url, b"\x16\x03\x01garbage\r\n\r\n")
        assert answer.split(b" ", 2)[1] == b"400"
        after = await raw_request(
            running.proxy_url, b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        assert after.split(b" ", 2)[1] == b"200"
        assert running.plane.listener is not None
        assert running.plane.listener.malformed == 2  # counted, one log line each


async def test_no_route_is_404(session: ClientSession) -> None:
    async with echo_proxy(
        routes=[{"prefix": "/only/", "upstream": "control", "methods": ["GET"]}]
    ) as (running, _):
        async with session.get(f"{running.proxy_url}/else") as response:
            assert response.status == 404
        async with session.post(f"{running.proxy_url}/only/x") as response:
            assert response.status == 404
        async with session.get(f"{running.proxy_url}/only/x") as response:
            assert response.status == 200


async def test_client_disconnect_mid_body_leaks_nothing(session: ClientSession) -> None:
    """Clients that vanish mid-upload: afterwards the pool counts exactly the sockets the
    upstream still holds, and it serves."""
    from tests.test_hostile_upstream import books_balance, hostile

    async with hostile() as (upstream, running):
        host, port = running.proxy_url.removeprefix("http://").rsplit(":", 1)
        for _ in range(5):
            _reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
            writer.write(b"y" * 100_000)
            await writer.drain()
            writer.transport.abort()
        await books_balance(upstream, running, session)


async def test_prebuilt_heads_follow_the_connection_rules_and_add_a_date() -> None:
    """Complete answers are written as prebuilt bytes (proxy/respond.py): the head says what
    aiohttp's would have, per client version and Connection, and a missing Date is added."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        response = web.Response(
            body=b"ok", headers={"Connection": "X-Named", "X-Named": "hop", "X-Kept": "1"}
        )
        if request.path == "/dated":
            response.headers["Date"] = "Tue, 01 Dec 2026 00:00:00 GMT"
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    async with serve_app(app) as url, proxy({"control": url}) as running:
        host, port = running.proxy_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for path in ("/a", "/dated"):  # HTTP/1.0 asking to keep the connection
                writer.write(f"GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.0 200 OK\r\n")
                assert b"\r\nConnection: keep-alive\r\n" in head
                assert b"\r\nContent-Length: 2\r\n" in head
                assert b"X-Named" not in head  # named by the upstream's Connection: hop-by-hop
                assert b"\r\nX-Kept: 1\r\n" in head
                assert head.count(b"\r\nDate: ") == 1
                assert (b"01 Dec 2026" in head) is (path == "/dated")
                assert await reader.readexactly(2) == b"ok"
        finally:
            writer.close()
        closing = await raw_request(
            running.proxy_url, b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert b"\r\nConnection: close\r\n" in closing
        assert closing.endswith(b"\r\n\r\nok")  # and the connection closed after it


async def test_absolute_form_targets_are_sent_on_in_origin_form() -> None:
    async with echo_proxy(routes=[{"prefix": "/in/", "upstream": "control"}]) as (running, _):
        answer = await raw_request(
            running.proxy_url,
            b"GET http://svc.example/in/x?a=1 HTTP/1.1\r\nHost: svc.example\r\n"
            b"Connection: close\r\n\r\n",
        )
        refused = await raw_request(
            running.proxy_url,
            b"GET http://svc.example/out HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["path_qs"] == "/in/x?a=1"
    assert refused.startswith(b"HTTP/1.1 404"), refused[:200]


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with echo_proxy() as (running, _):
        requests = b"".join(
            f"GET /p{index} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for index in range(5)
        )
        answer = await raw_request(
            running.proxy_url,
            requests + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
    paths = [
        orjson.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1", 1)[0])["path_qs"]
        for part in answer.split(b"HTTP/1.1 200 OK\r\n")[1:]
    ]
    assert paths == ["/p0", "/p1", "/p2", "/p3", "/p4", "/last"]
