"""Hostile or broken clients, and the upstream cases that meet them, on raw sockets: what a
client can hold is bounded, every refusal is an answer (or a clean close) and a counter.
Bounded: loopback, a handful of connections, sub-second limits set in the config."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession

from abgate.control.serve import Embedded, embedded
from tests.servers import echo_app, make_config, read_request, serve_app, until
from tests.test_hostile_upstream import hostile

FAST_CLIENT_LIMITS = {
    "client_header_timeout": "300ms",
    "client_keepalive_timeout": "1s",
    "client_body_timeout": "500ms",
    "max_header_size": "8KiB",
    "max_connections": 8,
}


@asynccontextmanager
async def echo_proxy(
    routes: list[dict[str, Any]] | None = None, **proxy: Any
) -> AsyncIterator[Embedded]:
    async with serve_app(echo_app()) as url:
        config = make_config(
            {"control": url},
            routes=routes or [{"prefix": "/", "upstream": "control"}],
            proxy={**FAST_CLIENT_LIMITS, **proxy},
        )
        async with embedded(config) as running:
            yield running


def port_of(running: Embedded) -> int:
    return int(running.proxy_url.rsplit(":", 1)[1])


async def connect(running: Embedded) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = running.proxy_url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def read_all(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.read(-1)


def refusals(running: Embedded) -> dict[str, int]:
    assert running.plane.listener is not None
    return running.plane.listener.limits.refused


async def test_slowloris_is_answered_408_and_closed() -> None:
    async with echo_proxy() as running:
        reader, writer = await connect(running)
        answer = b""
        for byte in b"GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: 1234567890":
            writer.write(bytes([byte]))
            try:  # 1 byte each 50 ms (the head would take 2 s), until the proxy answers
                answer = await asyncio.wait_for(reader.read(65536), 0.05)
                break
            except TimeoutError:
                continue
        answer += await read_all(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"no complete request head within 0.3s" in answer
    assert refusals(running) == {"header_timeout": 1}


async def test_idle_keep_alive_connections_are_closed(session: ClientSession) -> None:
    async with echo_proxy() as running:
        reader, writer = await connect(running)
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await read_all(reader) != b""  # the body, then the close after 1 s idle
        assert reader.at_eof()
        writer.close()


async def test_an_oversized_header_block_is_431() -> None:
    async with echo_proxy() as running:
        reader, writer = await connect(running)
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n")
        with contextlib.suppress(ConnectionError):
            for index in range(20):  # 20 KiB of headers, never finished
                writer.write(f"X-Filler-{index}: ".encode() + b"f" * 1000 + b"\r\n")
                await writer.drain()
                if reader.at_eof():
                    break
        answer = await read_all(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert refusals(running) == {"header_too_large": 1}


async def test_clients_beyond_max_connections_get_503(session: ClientSession) -> None:
    async with echo_proxy() as running:
        held = [await connect(running) for _ in range(8)]
        for _, writer in held:  # each held open mid-head... within the header timeout
            writer.write(b"GET /x HTTP/1.1\r\n")
        assert running.plane.listener is not None
        await until(lambda: running.plane.listener.connections >= 8)  # type: ignore[union-attr]
        reader, writer = await connect(running)
        answer = await read_all(reader)
        writer.close()
        for _, other in held:
            other.close()
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert refusals(running)["max_connections"] >= 1
        await until(lambda: running.plane.listener.connections == 0)  # type: ignore[union-attr]
        async with session.get(f"{running.proxy_url}/after") as response:
            assert response.status == 200


async def test_expect_100_continue_is_answered() -> None:
    async with echo_proxy() as running:
        reader, writer = await connect(running)
        writer.write(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()


async def test_http_09_is_refused_in_http_11() -> None:
    async with echo_proxy() as running:
        reader, writer = await connect(running)
        writer.write(b"GET /x\r\n\r\n")
        answer = await read_all(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 505 ")
    assert b"HTTP/0.9 is not supported" in answer


@pytest.mark.parametrize(
    ("raw", "status", "seen_path"),
    [
        ("/raw/../h/ok", 200, "/h/ok"),  # matched and forwarded as the same path
        ("/raw/%2e%2e/%2E%2e/secret", 404, None),  # /secret: no route allows it
        ("/raw/..%2f..%2fsecret", 400, None),
        ("/raw/ok", 200, "/raw/ok"),
    ],
)
async def test_dot_segments_cannot_escape_a_route_prefix(
    raw: str, status: int, seen_path: str | None
) -> None:
    async with echo_proxy(
        routes=[
            {"prefix": "/raw/", "upstream": "control"},
            {"prefix": "/h/", "upstream": "control"},
        ]
    ) as running:
        reader, writer = await connect(running)
        writer.write(f"GET {raw} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        answer = await read_all(reader)
        writer.close()
    assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer[:200]
    if seen_path is not None:
        assert f'"path_qs":"{seen_path}"'.encode() in answer


async def slow_upload(writer: asyncio.StreamWriter, pause: float) -> None:
    writer.write(
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 300000\r\n"
        b"Connection: close\r\n\r\n" + b"a" * 150_000
    )
    await writer.drain()
    await asyncio.sleep(pause)
    writer.write(b"b" * 150_000)
    await writer.drain()


async def test_a_client_pausing_mid_upload_is_not_the_upstreams_timeout() -> None:
    async with serve_app(echo_app()) as url:  # read_timeout 300 ms; the client pauses 800 ms
        config = make_config(
            {"control": url},
            routes=[{"prefix": "/", "upstream": "control"}],
            upstream_options={"read_timeout": "300ms"},
            proxy={"client_body_timeout": "5s"},
        )
        async with embedded(config) as running:
            reader, writer = await connect(running)
            await slow_upload(writer, 0.8)
            answer = await read_all(reader)
            writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b'"body_size":300000' in answer


async def test_a_client_stalling_mid_upload_gets_408() -> None:
    async with echo_proxy() as running:  # client_body_timeout 500 ms
        for length in (300_000, 30_000):  # a streamed body, and a buffered one
            reader, writer = await connect(running)
            writer.write(
                f"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n".encode()
                + b"a" * (length // 2)
            )
            stalled = await read_all(reader)
            writer.close()
            assert stalled.startswith(b"HTTP/1.1 408"), stalled[:300]
            assert b"no request body within 0.5s" in stalled


async def test_an_early_upstream_answer_to_a_streamed_upload_is_passed_through() -> None:
    async def refuses_large_bodies(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n"
            b"Connection: close\r\n\r\ntoo much"
        )
        await writer.drain()
        # A lingering close, as nginx and aiohttp do: closing with unread request bytes
        # sends a TCP reset, which may make the kernel discard the answer before the peer
        # reads it; no proxy can pass on an answer its kernel threw away.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                while await reader.read(65536):
                    pass
        writer.close()

    async with hostile() as (upstream, running):
        upstream.behaviour = refuses_large_bodies
        statuses = []
        for _ in range(10):
            reader, writer = await connect(running)
            writer.write(
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n"
                b"Connection: close\r\n\r\n"
            )
            with contextlib.suppress(ConnectionError):
                for _ in range(16):
                    writer.write(b"x" * 65536)
                    await writer.drain()
            answer = await read_all(reader)
            writer.close()
            statuses.append(answer[:12])
    assert statuses == [b"HTTP/1.1 413"] * 10


async def test_a_dripped_response_head_does_not_extend_read_timeout(session: ClientSession) -> None:
    async def drips(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for byte in b"HTTP/1.1 200 OK\r\nX-Drip: abcdefghijklmnopqrstuvwxyz\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)  # ~2.5 s for the head; read_timeout is 500 ms
        writer.write(b"Content-Length: 0\r\n\r\n")

    async with hostile() as (upstream, running):
        upstream.behaviour = drips
        async with session.get(f"{running.proxy_url}/x") as response:
            assert response.status == 504
            assert "no response head within 0.5s" in (await response.json())["error"]


async def test_response_timeout_bounds_a_body_that_never_ends(session: ClientSession) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        for _ in range(200):  # a byte each 20 ms: never idle for read_timeout
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.02)

    async with hostile(response_timeout="800ms") as (upstream, running):
        upstream.behaviour = endless
        async with session.get(f"{running.proxy_url}/x") as response:
            assert response.status == 200
            with pytest.raises(Exception):  # noqa: B017, PT011 - the body is cut off
                await response.read()


async def test_chunked_trailers_are_not_merged_into_the_head(session: ClientSession) -> None:
    async def with_trailer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-Sum: 42\r\n\r\n"
        )

    async with hostile() as (upstream, running):
        upstream.behaviour = with_trailer
        async with session.get(f"{running.proxy_url}/x") as response:
            assert await response.read() == b"ok"
            assert "X-Sum" not in response.headers


async def test_a_stray_late_response_is_never_served_to_the_next_client(
    session: ClientSession,
) -> None:
    dropped = asyncio.Event()

    async def answers_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
        await writer.drain()
        await asyncio.sleep(0.05)  # then, unasked, while the connection sits in the pool
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray")
        await writer.drain()
        await reader.read()  # abgate closes a connection that speaks out of turn ...
        dropped.set()  # ... which proves the stray bytes reached it

    async with hostile() as (upstream, running):
        upstream.behaviour = answers_twice
        bodies = []
        for _ in range(4):
            async with session.get(f"{running.proxy_url}/x") as response:
                bodies.append(await response.read())
            await asyncio.wait_for(dropped.wait(), 60)  # the stray bytes were seen
            dropped.clear()
    assert bodies == [b"real"] * 4


async def test_a_client_leaving_mid_upload_leaves_no_unretrieved_future(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with echo_proxy(client_body_timeout="5s") as running:
        for _ in range(5):
            _, writer = await connect(running)
            writer.write(
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + b"y" * 200_000
            )
            await writer.drain()
            writer.transport.abort()
        listener = running.plane.listener
        assert listener is not None
        await until(lambda: listener.connections == 0)  # the aborted exchanges are torn down
        import gc

        gc.collect()  # futures report "never retrieved" when collected
        await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


# Client-side edges (issue 23 §4): each failed before abgate served with its own protocol.


@pytest.mark.parametrize("raw", ["/raw/..#x", "/raw/%2e%2e#", "/raw/%2E%2e/#frag"])
async def test_a_fragment_is_dropped_before_the_path_is_matched(raw: str) -> None:
    async with echo_proxy(routes=[{"prefix": "/raw/", "upstream": "control"}]) as running:
        reader, writer = await connect(running)
        writer.write(f"GET {raw} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        answer = await read_all(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 404"), answer[:200]  # `/`: outside /raw/
    assert b"#" not in answer.split(b"\r\n\r\n", 1)[1]


async def test_an_unusable_request_id_is_replaced_not_a_500() -> None:
    async with echo_proxy(routes=[{"prefix": "/in/", "upstream": "control"}]) as running:
        for path, status in (("/out", 404), ("/in/x", 200)):
            reader, writer = await connect(running)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n".encode()
                + b"X-Request-Id: \xff\xfe\r\n\r\n"
            )
            answer = await read_all(reader)
            writer.close()
            head, body = answer.split(b"\r\n\r\n", 1)
            assert head.startswith(f"HTTP/1.1 {status}".encode()), answer[:300]
            assert b"\xff" not in answer
            generated = head.split(b"X-Request-Id: ", 1)[1].split(b"\r\n", 1)[0].decode()
            if status == 404:
                assert orjson.loads(body)["request_id"] == generated
            else:  # the upstream was sent the generated id, not the bytes
                sent = dict((k.lower(), v) for k, v in orjson.loads(body)["headers"])
                assert sent["x-request-id"] == generated


async def test_the_body_timeout_bounds_a_pause_not_the_whole_body() -> None:
    async with echo_proxy(client_body_timeout="1s") as running:  # a byte each 100 ms: 3 s
        reader, writer = await connect(running)
        writer.write(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\nConnection: close\r\n\r\n"
        )
        for _ in range(30):
            await asyncio.sleep(0.1)
            writer.write(b"b")
        answer = await read_all(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b'"body_size":30' in answer


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        (b"X-Big: " + b"b" * 12_000 + b"\r\n", b"request head over 8192 bytes"),  # in one read
        (b"".join(b"X-F%d: 1\r\n" % i for i in range(200)), b"over 100 header fields"),
    ],
)
async def test_a_whole_head_too_large_or_with_too_many_fields_is_431(
    headers: bytes, detail: bytes
) -> None:
    async with echo_proxy() as running:  # max_header_size 8 KiB
        reader, writer = await connect(running)
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n")
        answer = await read_all(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]
    assert detail in answer
    assert refusals(running) == {"header_too_large": 1}


@pytest.mark.parametrize(
    ("request_line", "version"),
    [(b"GET /x\r\n", b"HTTP/0.9"), (b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n", b"HTTP/2.0")],
)
async def test_versions_other_than_1x_are_505_at_once(request_line: bytes, version: bytes) -> None:
    async with echo_proxy(client_header_timeout="10s") as running:
        reader, writer = await connect(running)
        writer.write(request_line)  # HTTP/0.9: no blank line follows, nothing more comes
        answer = await read_all(reader, timeout=5.0)  # well before the header timeout
        writer.close()
    assert answer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), answer[:200]
    assert version + b" is not supported" in answer


async def test_clients_refused_over_max_connections_get_the_503_without_a_reset() -> None:
    async with echo_proxy() as running:  # max_connections 8
        held = [await connect(running) for _ in range(8)]
        for _, writer in held:
            writer.write(b"GET /x HTTP/1.1\r\n")
        assert running.plane.listener is not None
        await until(lambda: running.plane.listener.connections >= 8)  # type: ignore[union-attr]
        # Each client's whole request is in the kernel before abgate accepts it (the loop is
        # held while they connect and send): closing at once would reset them.
        clients = []
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", port_of(running)))
            sock.sendall(
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + b"p" * 5000
            )
            clients.append(sock)
        answers = []
        for sock in clients:
            reader, writer = await asyncio.open_connection(sock=sock)
            answers.append(await read_all(reader))  # a reset would raise here
            writer.close()
        for _, other in held:
            other.close()
    assert all(a.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") for a in answers)
    assert refusals(running)["max_connections"] == 20


async def test_a_body_pause_is_judged_by_its_own_timeout_not_a_longer_one() -> None:
    """The connection's one timer, armed for the 10 s head deadline, is brought forward when
    a body wait begins: a stalled body gets its 408 after client_body_timeout."""
    async with echo_proxy(client_header_timeout="10s", client_body_timeout="300ms") as running:
        reader, writer = await connect(running)
        writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        answer = await read_all(reader, timeout=5.0)  # long before the 10 s
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n", 400),  # no Host
        (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", 400),
        (b"GET /x HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /x HTTP/1.0\r\n\r\n", 200),  # HTTP/1.0 may leave it out
    ],
)
async def test_an_http_11_request_has_exactly_one_host(head: bytes, status: int) -> None:
    """RFC 9112 §3.2, as nginx judges it: which of two Hosts would routing trust?"""
    async with echo_proxy() as running:
        reader, writer = await connect(running)
        writer.write(head)
        answer = await read_all(reader)
        writer.close()
    assert answer.startswith((b"HTTP/1.1 %d" % status, b"HTTP/1.0 %d" % status)), answer[:200]
    if status == 400:
        assert b"exactly one Host header" in answer
