"""Keep-alive connection pool for one upstream, and the request-with-one-replay it offers.

No locks: the pool lives on one event loop. Idle connections are reused last-in first-out (the
warmest first); a timer per pool (not per request) closes those idle past idle_timeout. When
all `pool_size` connections are busy, callers queue (FIFO) for at most connect_timeout.

Slot accounting has one owner: the pool counts the connections it holds in a set, and each
connection reports its own end exactly once (`UpstreamConnection` calls back with
`reusable=False` however the exchange ended: completed and not reusable, failed, timed out,
lost mid-body, closed by us). So the count of open connections is the number of live ones,
never drifting, whatever breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from abgate.config.model import UpstreamConfig
from abgate.proxy.errors import PoolTimeout, UpstreamClosed, UpstreamConnectError, UpstreamTimeout
from abgate.proxy.upstream import UpstreamConnection, UpstreamResponse


class UpstreamPool:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.name = config.name
        self._loop = asyncio.get_running_loop()
        self._live: set[UpstreamConnection] = set()
        self._idle: deque[UpstreamConnection] = deque()  # oldest on the left
        self._waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self._connecting = 0  # slots taken by connects in progress (or promised to a waiter)
        self._reaper: asyncio.TimerHandle | None = None
        self._closed = False
        # Counters read by the metrics collector.
        self.connects = 0
        self.stale_retries = 0

    @property
    def open_connections(self) -> int:
        return len(self._live)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def request(
        self,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        *,
        head_only: bool = False,
        chunked: bool = False,
    ) -> UpstreamResponse:
        """One exchange. A buffered request that meets a pooled connection the upstream had
        already closed is sent again, once, on a fresh connection."""
        conn = await self._acquire()
        reused = conn.uses > 0
        try:
            return await conn.exchange(head, body, head_only=head_only, chunked=chunked)
        except UpstreamClosed as exc:
            replayable = body is None or isinstance(body, bytes)
            if not (reused and exc.nothing_received and replayable):
                raise
        return await self.replay(head, body, head_only=head_only)  # type: ignore[arg-type]

    async def replay(self, head: bytes, body: bytes | None, *, head_only: bool) -> UpstreamResponse:
        """Send again, on a fresh connection, a request that met a pooled connection the
        upstream had closed before answering (the idle keep-alive race)."""
        self.stale_retries += 1
        conn = await self._acquire(fresh=True)
        return await conn.exchange(head, body, head_only=head_only)

    def take_idle(self) -> UpstreamConnection | None:
        """The warmest idle connection still usable, without waiting; None when there is
        none (the caller then waits in `request`)."""
        if self._closed:
            return None
        now = self._loop.time()
        idle_timeout = self.config.idle_timeout
        while self._idle:
            conn = self._idle.pop()
            if conn.usable and now - conn.idle_since < idle_timeout:
                return conn
            conn.close()  # reports itself gone: the set forgets it
        return None

    async def _acquire(self, *, fresh: bool = False) -> UpstreamConnection:
        if self._closed:
            raise UpstreamConnectError(self.name, "pool is closed")
        if not fresh:
            conn = self.take_idle()
            if conn is not None:
                return conn
        if len(self._live) + self._connecting >= self.config.pool_size:
            reused = await self._wait_for_connection()
            if reused is not None:
                return reused
            # Woken with a free slot, already reserved for us in _connecting.
        else:
            self._connecting += 1
        try:
            conn = await self._connect()
        except BaseException:
            self._connecting -= 1
            self._offer_slot()
            raise
        self._connecting -= 1
        if not conn.usable:  # closed before we even got it
            self._offer_slot()
            raise UpstreamConnectError(self.name, "connection closed right after connect")
        self._live.add(conn)
        return conn

    async def _wait_for_connection(self) -> UpstreamConnection | None:
        """Wait for a released connection (returned) or a reserved free slot (None)."""
        waiter: asyncio.Future[UpstreamConnection | None] = self._loop.create_future()
        self._waiters.append(waiter)
        handed_over = False
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                result = await waiter
            handed_over = True
            return result
        except TimeoutError:
            raise PoolTimeout(
                self.name,
                f"all {self.config.pool_size} connections busy for "
                f"{self.config.connect_timeout:g}s",
            ) from None
        finally:
            if not handed_over:
                self._pass_on(waiter)

    def _pass_on(self, waiter: asyncio.Future[UpstreamConnection | None]) -> None:
        """A waiter gave up (timeout, cancel); whatever it was handed goes to the next one."""
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        elif not waiter.cancelled() and waiter.exception() is None:
            conn = waiter.result()
            if conn is not None:
                self._release(conn, True)
            else:
                self._connecting -= 1  # the slot reserved for it is free again
                self._offer_slot()

    async def _connect(self) -> UpstreamConnection:
        config = self.config
        try:
            async with asyncio.timeout(config.connect_timeout):
                _, conn = await self._loop.create_connection(
                    lambda: UpstreamConnection(config, self._release), config.host, config.port
                )
        except TimeoutError:
            raise UpstreamConnectError(
                self.name, f"connect timed out after {config.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            raise UpstreamConnectError(self.name, f"connect failed: {exc.strerror or exc}") from exc
        self.connects += 1
        return conn

    def _release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """An exchange ended with `conn` reusable, or `conn` is gone (called once for it)."""
        if reusable:
            if self._closed or not conn.usable:
                conn.close()  # comes back here as gone
                return
            waiter = self._next_waiter()
            if waiter is not None:
                waiter.set_result(conn)
                return
            conn.idle_since = self._loop.time()
            self._idle.append(conn)
            if self._reaper is None:
                self._arm_reaper()
            return
        if conn in self._live:
            self._live.discard(conn)
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)  # it died while idle
            self._offer_slot()

    def _next_waiter(self) -> asyncio.Future[UpstreamConnection | None] | None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                return waiter
        return None

    def _offer_slot(self) -> None:
        """A slot is free: promise it to the next waiter, if any (it connects)."""
        waiter = self._next_waiter()
        if waiter is not None:
            self._connecting += 1
            waiter.set_result(None)

    def _arm_reaper(self) -> None:
        if self._idle and not self._closed:
            deadline = self._idle[0].idle_since + self.config.idle_timeout
            self._reaper = self._loop.call_at(deadline, self._reap)

    def _reap(self) -> None:
        """Close idle connections past idle_timeout, oldest first; re-arm for the next."""
        self._reaper = None
        now = self._loop.time()
        while self._idle and now - self._idle[0].idle_since >= self.config.idle_timeout:
            self._idle.popleft().close()
        self._arm_reaper()

    async def close(self) -> None:
        """Close idle connections now; busy ones close when their exchange ends."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        while self._idle:
            self._idle.pop().close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamConnectError(self.name, "pool is closed"))
        await asyncio.sleep(0)  # let transports run their close callbacks


__all__ = ["UpstreamPool", "UpstreamTimeout"]
