"""A real redis-server on an ephemeral port that tests can kill and restart (empty)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.servers import free_port


def redis_binary() -> str:
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed; `make test-servers` installs it")
        pytest.skip(
            "redis-server is not installed (run `make test-servers`); the Redis tests "
            "are skipped outside CI only"
        )
    return path


class RedisServer:
    def __init__(self, binary: str, workdir: Path, *, durable: bool = False) -> None:
        self.binary = binary
        self.workdir = workdir
        # durable: an append-only file synced at every write, so a restart after a kill
        # keeps every write Redis acknowledged (or applied) before it died.
        self.durable = durable
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start (again) on the same port: with nothing in it, or (durable) with what the
        append-only file holds."""
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.durable else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = self.client()
        try:
            async with asyncio.timeout(20):
                while True:
                    try:
                        await client.ping()
                        return
                    except (OSError, Exception):  # not accepting yet
                        await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        """SIGKILL: the way a crash looks to clients."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    def client(self) -> Redis:
        return Redis.from_url(self.url, decode_responses=True)


@asynccontextmanager
async def redis_server(tmp_path: Path, *, durable: bool = False) -> AsyncIterator[RedisServer]:
    server = RedisServer(redis_binary(), tmp_path, durable=durable)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
