"""An upstream's response as abgate receives it: the head, then the body as it arrives
(`read`, with back-pressure on the upstream's socket) or whole (`complete`, `body`)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from abgate.proxy.errors import UpstreamError

# Body bytes buffered for a slow client before the upstream socket is paused.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class ResponseSource(Protocol):
    """The upstream connection a response arrives on (proxy/upstream.py's
    UpstreamConnection), as the response steers it: declared here so that the connection can
    make responses without the two modules importing each other."""

    def abandon(self, response: UpstreamResponse) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class UpstreamResponse:
    """A response head, and its body as it arrives (`read`) or whole (`complete`, `body`)."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_error",
        "_waiter",
        "complete",
        "headers",
        "status",
    )

    def __init__(self, conn: ResponseSource) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None

    def body(self) -> bytes:
        """The whole body; only once `complete`. May be called again."""
        chunks = self._chunks
        if len(chunks) == 1:
            return chunks[0]
        data = b"".join(chunks)
        chunks.clear()
        chunks.append(data)
        return data

    def abandon(self) -> None:
        if not self.complete:
            self._conn.abandon(self)

    def content_length(self) -> int | None:
        for name, value in self.headers:
            if name.lower() == b"content-length":
                return int(value)
        return None

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end. Raises UpstreamError if it broke off."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < LOW_WATER:
                    self._conn.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def _finish(self, error: UpstreamError | None = None) -> None:
        if error is None:
            self.complete = True
        else:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
