"""Write flow control for one connection (uvicorn's `flow_control.py` is the model): the
transport says when its buffer is over its high-water mark and when it drained; a writer
that must not run ahead (a streamed body, either way) waits in `drain`."""

from __future__ import annotations

import asyncio


class WriteFlow:
    __slots__ = ("_waiter", "paused")

    def __init__(self) -> None:
        self.paused = False
        self._waiter: asyncio.Future[None] | None = None

    def pause(self) -> None:
        """The transport's buffer is over its high-water mark."""
        self.paused = True

    def resume(self) -> None:
        """It drained (or the connection is gone): a waiting writer goes on."""
        self.paused = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport drained; at once when it is not paused."""
        while self.paused:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
