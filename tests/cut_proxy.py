"""A TCP forwarder between abgate and a real server (Redis) that can cut one exchange on
purpose, at a chosen moment: the request of a command never delivered, or its reply lost
after the server acted on it. What a crash or a network cut looks like to a client, at the
moment that matters, with no timing involved."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal

Cut = Literal["request", "reply"]


class CutProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._marker: bytes | None = None
        self._where: Cut = "reply"
        self._sever = False
        self.cut = asyncio.Event()  # set when the armed exchange was cut
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arm(self, marker: bytes, where: Cut, *, sever: bool = False) -> asyncio.Event:
        """Cut the next exchange whose request holds `marker`: `request` drops the request
        (the server never sees it), `reply` forwards it and drops the server's answer. Either
        way the client's connection is then closed; with `sever`, every connection is, and
        no new one is taken (the server is gone for good, as far as the client can tell)."""
        self._marker, self._where, self._sever = marker, where, sever
        self.cut = asyncio.Event()
        return self.cut

    def _cut(self) -> None:
        self.cut.set()
        if self._sever and self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.add(upstream)
        cutting = asyncio.Event()  # this connection's next reply is to be dropped

        async def to_server() -> None:
            while data := await reader.read(65536):
                marker = self._marker
                if marker is not None and marker in data:
                    self._marker = None
                    if self._where == "request":
                        self._cut()
                        return
                    cutting.set()
                upstream.write(data)
                await upstream.drain()

        async def to_client() -> None:
            while data := await upstream_reader.read(65536):
                if cutting.is_set():
                    self._cut()
                    return
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(to_server()), asyncio.create_task(to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for end in (writer, upstream):
                end.close()
                self._writers.discard(end)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


@contextlib.asynccontextmanager
async def cut_proxy(target_port: int) -> AsyncIterator[CutProxy]:
    proxy = CutProxy(target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
