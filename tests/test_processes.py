"""The real `abgate` command: CLI, graceful shutdown, workers sharing a port, streaming."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import ClientSession, web

from tests.processes import abgate, config_document, write_config
from tests.servers import echo_app, serve_app

MiB = 1024 * 1024


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_version_and_help() -> None:
    version = run_cli("--version")
    assert version.returncode == 0
    assert re.fullmatch(r"abgate \d+\.\d+\.\d+\n", version.stdout)
    for command in ("run", "proxy", "check-config"):
        helped = run_cli(command, "--help")
        assert helped.returncode == 0
        assert f"usage: abgate {command}" in helped.stdout
    assert "--workers" in run_cli("proxy", "--help").stdout


async def test_sigterm_finishes_in_flight_requests(tmp_path: Path, session: ClientSession) -> None:
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(1.0)
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/slow", slow)
    async with serve_app(app) as upstream:
        config = write_config(tmp_path / "c.yaml", config_document(upstream))
        async with abgate(
            "run", "--config", str(config), expect={"proxy": 1, "control API": 1}
        ) as process:
            request = asyncio.create_task(session.get(f"{process.url('proxy')}/slow"))
            await arrived.wait()
            process.proc.terminate()  # SIGTERM while the request is in flight
            response = await request
            assert response.status == 200
            assert await response.text() == "finished"
            assert await process.wait() == 0


async def test_workers_share_the_port(tmp_path: Path, session: ClientSession) -> None:
    async with serve_app(echo_app()) as upstream:
        config = write_config(tmp_path / "c.yaml", config_document(upstream))
        async with abgate(
            "proxy", "--config", str(config), "--workers", "2", expect={"proxy": 2, "admin": 2}
        ) as process:
            proxy_urls = set(process.urls["proxy"])
            assert len(proxy_urls) == 1  # both workers on one port
            url = proxy_urls.pop()
            for _ in range(60):  # new connection each time: the kernel spreads them
                async with session.get(f"{url}/x", headers={"Connection": "close"}) as response:
                    assert response.status == 200
            served = []
            for admin in process.urls["admin"]:
                async with session.get(f"{admin}/metrics") as response:
                    text = await response.text()
                served.append(
                    sum(
                        float(line.rsplit(" ", 1)[1])
                        for line in text.splitlines()
                        if line.startswith("abgate_requests_total")
                    )
                )
            assert sum(served) == 60
            assert all(count > 0 for count in served), served
            assert await process.stop() == 0


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return kib / 1024


async def test_100mb_bodies_stream_with_bounded_memory(
    tmp_path: Path, session: ClientSession
) -> None:
    size = 100 * MiB

    async def upload() -> AsyncIterator[bytes]:
        block = b"u" * MiB
        for _ in range(size // MiB):
            yield block

    async with serve_app(echo_app()) as upstream:
        document = config_document(upstream, max_body_size="1GiB")
        config = write_config(tmp_path / "c.yaml", document)
        async with abgate(
            "run", "--config", str(config), expect={"proxy": 1, "control API": 1}
        ) as process:
            base = process.url("proxy")
            async with session.get(f"{base}/warm-up") as response:
                assert response.status == 200
            before = peak_rss_mib(process.pid)
            async with session.get(f"{base}/download/{size}") as response:
                assert response.headers["Content-Length"] == str(size)
                received = 0
                async for chunk in response.content.iter_chunked(MiB):
                    received += len(chunk)
            assert received == size
            headers = {"Content-Length": str(size)}
            async with session.post(f"{base}/upload", data=upload(), headers=headers) as response:
                assert (await response.json())["body_size"] == size
            async with session.post(f"{base}/upload-chunked", data=upload()) as response:
                assert (await response.json())["body_size"] == size
            growth = peak_rss_mib(process.pid) - before
            assert growth < 40, f"peak RSS grew {growth:.1f} MiB moving 300 MiB of bodies"
            assert await process.stop() == 0


def test_data_plane_does_not_load_scipy() -> None:
    """scipy costs tens of MiB; only processes that evaluate statistics may load it."""
    probe = (
        "import sys, control.cli, control.serve, proxy.runtime; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('scipy', 'numpy')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
