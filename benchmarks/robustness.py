"""Robustness of `abgate run` against hostile peers (issue 9), on loopback, bounded:

  header pressure   400 clients each send an unfinished request head of up to 2 MB
  idle clients      1,000 connections that send nothing or go idle after one request
  upstream crashes  100 exchanges cut by a reset mid-body, then the pool's books

Writes the "robustness" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time
import urllib.request
from pathlib import Path
from tempfile import TemporaryDirectory

import yaml

from benchmarks.common import ROOT, process, verdict, wait_http, write_section
from benchmarks.run import rss_mib

PROXY, CONTROL = 18680, 18692
HEAD_CLIENTS, HEAD_BYTES = 400, 2 * 1024 * 1024
IDLE_CLIENTS = 1000
CRASHES = 100


def metric(name: str, labels: str = "") -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{CONTROL}/metrics", timeout=5) as response:
        text = response.read().decode()
    prefix = name + labels
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix + " ") or (not labels and line.startswith(name + "{"))
    )


class Upstream:
    """Answers `ok`, or resets every exchange mid-body while `crashing`."""

    def __init__(self) -> None:
        self.crashing = False
        self.live: set[asyncio.StreamWriter] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.live.add(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if self.crashing:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nxx")
                    await writer.drain()
                    writer.transport.abort()
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.live.discard(writer)
            writer.close()


async def header_pressure() -> tuple[int, int]:
    """(clients answered 431, clients closed otherwise)."""

    async def one() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", PROXY)
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n")
        sent = 0
        with contextlib.suppress(ConnectionError):
            while sent < HEAD_BYTES and not reader.at_eof():
                writer.write(b"X-Filler: " + b"f" * 8000 + b"\r\n")
                sent += 8012
                await writer.drain()
        answer = b""
        with contextlib.suppress(ConnectionError, TimeoutError):
            answer = await asyncio.wait_for(reader.read(200), 15)
        writer.close()
        return answer.startswith(b"HTTP/1.1 431")

    results = await asyncio.gather(*(one() for _ in range(HEAD_CLIENTS)))
    return sum(results), len(results) - sum(results)


async def idle_clients() -> tuple[float, float]:
    """(connections open right after connecting, after the header and keep-alive timeouts)."""
    writers = []
    for index in range(IDLE_CLIENTS):
        reader, writer = await asyncio.open_connection("127.0.0.1", PROXY)
        if index % 2:  # half make one request and then sit idle
            writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            await reader.readuntil(b"ok")
        writers.append(writer)
    held = metric("abgate_client_connections")
    await asyncio.sleep(12)  # the header timeout (10 s) and keep-alive timeout (5 s here)
    left = metric("abgate_client_connections")
    for writer in writers:
        writer.close()
    return held, left


async def crashes(upstream: Upstream) -> tuple[float, int, int]:
    """(pool open connections minus upstream sockets after the crashes, normal answers after,
    requests tried after)."""
    upstream.crashing = True

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", PROXY)
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    for _ in range(CRASHES // 10):
        await asyncio.gather(*(one() for _ in range(10)))
    upstream.crashing = False
    await asyncio.sleep(0.5)
    drift = metric("abgate_upstream_connections", '{state="open",upstream="control"}') - len(
        upstream.live
    )
    ok = 0
    for _ in range(200):
        reader, writer = await asyncio.open_connection("127.0.0.1", PROXY)
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        ok += (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
    return drift, ok, 200


async def measure(workdir: Path) -> str:
    upstream = Upstream()
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = workdir / "abgate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "proxy": {
                    "listen": f"127.0.0.1:{PROXY}",
                    "admin_listen": "127.0.0.1:0",
                    "client_keepalive_timeout": "5s",
                },
                "control": {"listen": f"127.0.0.1:{CONTROL}"},
                "flags": {"state_file": None},
                "upstreams": {
                    "control": {
                        "url": f"http://127.0.0.1:{port}",
                        "pool_size": 16,
                        "breaker": {"consecutive_failures": 1_000_000, "minimum_calls": 1_000_000},
                    }
                },
                "routes": [{"prefix": "/", "upstream": "control"}],
            }
        )
    )
    with process(
        [str(ROOT / ".venv" / "bin" / "abgate"), "run", "--config", str(config)], cwd=workdir
    ) as abgate:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{CONTROL}/health")
        before = rss_mib(abgate.pid)
        refused, other = await header_pressure()
        after_heads = rss_mib(abgate.pid)
        held, left = await idle_clients()
        drift, ok, tried = await crashes(upstream)
        after = rss_mib(abgate.pid)
    server.close()
    rows = "\n".join(
        (
            f"| {HEAD_CLIENTS} clients sending unfinished 2 MB heads: RSS | 113 MB -> 1.7 GB | "
            f"{before:.0f} -> {after_heads:.0f} MiB ({refused} answered 431, {other} closed "
            f"otherwise) | bounded: {verdict(after_heads - before < 100)} |",
            f"| {IDLE_CLIENTS} idle clients (half never send, half idle after a request): held "
            f"after 12 s | all, for 90 s and more | {held:.0f} held at first, {left:.0f} after "
            f"12 s | 0: {verdict(left == 0)} |",
            f"| pool after {CRASHES} upstream crashes mid-body: open minus real sockets | 128 of "
            f"128 leaked after 6 crashes of 22 | {drift:+.0f}; then {ok} of {tried} requests "
            f"answered 200 | 0 and all: {verdict(drift == 0 and ok == tried)} |",
        )
    )
    return f"""## Robustness (issue 9)

Measured by `make bench` (`benchmarks/robustness.py`) on {time.strftime("%Y-%m-%d")}: `abgate
run` with the default client limits (client_header_timeout 10 s, max_header_size 64 KiB)
but client_keepalive_timeout 5 s, against a raw upstream in the benchmark process; loopback.

| what | before the fix (issue 9's run) | measured now | target |
|---|---|---|---|
{rows}

RSS at the end: {after:.0f} MiB. The header bytes a client may hold are capped by
max_header_size (a longer head is a 431, counted in `abgate_client_refusals_total`), so 400
such clients cost at most 400 x 64 KiB of buffers while they last.
"""


def main() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    with TemporaryDirectory() as tmp:
        text = asyncio.run(measure(Path(tmp)))
    write_section("robustness", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
