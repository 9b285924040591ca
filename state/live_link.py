"""The data plane's end of the live-state channel (state/live_channel.py).

`LiveStateLink` connects to the control process, retrying with backoff while it is away
(it may be restarting), and says hello: who it is, where it listens, which config file it
runs. The answer carries every flag, applied at once, so a change missed while apart is never
lost (as a Redis reader re-reads everything on each reconnect); after that each change
arrives as a notice, is applied to the FlagTable, and the versions now routed with go back
(what a rollback waits for). The control process's requests (breaker states, metrics,
reload, ...) are answered by handlers the data plane's owner wires in.

`ChannelMeasurements` is the measurement store the data plane flushes to when there is no
Redis: each flush's calls go over as requests, its batch with its id (applied once by the
control process's embedded store, resent unchanged by the flusher until answered).

Nothing here waits on the request path: the link is one owned task, the flushes are the
flusher's.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.core import Metric

from abgate.config import metrics_catalogue
from abgate.state.errors import StoreUnavailable
from abgate.state.flags import FlagTable, flag_from_json
from abgate.state.live_channel import Peer, RemoteError, RequestHandler
from abgate.state.measurements import HeldOutcome, MeasureKey, Phase, Sums, UsersKey

log = logging.getLogger("abgate.channel")
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0
FIRST_BACKOFF_MAX = 0.2
# At start the control process is starting too and makes its socket after the data plane may
# have tried it: a missing socket is said only once it is still missing after this long.
START_QUIET = 5.0
FLUSH_TIMEOUT = 5.0


class LiveStateLink:
    """One owned task keeping this data plane connected to its control process."""

    def __init__(
        self,
        path: str | Path,
        table: FlagTable,
        *,
        hello: Callable[[], dict[str, Any]],
        requests: Mapping[str, RequestHandler] | None = None,
        on_config: Callable[[bytes], Awaitable[object]] | None = None,
        flags: bool = True,
    ) -> None:
        self._path = str(path)
        self.table = table
        self._hello = hello  # evaluated at each connect: the address is known by then
        self._requests = dict(requests or {})
        self.on_config = on_config  # the control process runs another config: take it
        self._flags = flags  # False: flags come from Redis, the channel only answers
        self._peer: Peer | None = None
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()  # set once the first hello was answered
        self.reconnects = 0
        self._away_since: float | None = None

    async def __aenter__(self) -> LiveStateLink:
        self._task = asyncio.create_task(self._run(), name="abgate-live-link")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._peer is not None:
            await self._peer.aclose()

    def answer(self, requests: Mapping[str, RequestHandler]) -> None:
        """Handlers for the control process's requests (before the link is entered)."""
        self._requests.update(requests)

    @property
    def connected(self) -> bool:
        return self._peer is not None and self._peer.open

    async def request(self, op: str, *, within: float, **fields: Any) -> Any:
        peer = self._peer
        if peer is None or not peer.open:
            raise StoreUnavailable("the control process is not connected")
        return await peer.request(op, within=within, **fields)

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self._path)
            except OSError as exc:
                if not self.synced.is_set() and loop.time() - started < START_QUIET:
                    log.debug("control process not listening yet (%s); retrying", exc)
                elif self._away_since is None:
                    self._away_since = loop.time()
                    log.warning(
                        "control process unreachable (%s); routing with the last flags, retrying",
                        exc.strerror or exc,
                    )
            else:
                peer = Peer(reader, writer, name="the control process", requests=self._requests)
                peer.on_notice("flags", self._on_flags)
                try:
                    if await self._session(peer):
                        backoff = BACKOFF_FIRST
                except StoreUnavailable:
                    pass  # gone in the middle of the hello: try again
                except Exception as exc:  # a bug: logged, and the link lives on
                    log.error("live-state link failed; reconnecting", exc_info=exc)
                    await peer.aclose()
            await asyncio.sleep(backoff * (0.5 + random.random()))
            # Before the first hello the control process is starting too: ask often.
            backoff = min(backoff * 2, BACKOFF_MAX if self.synced.is_set() else FIRST_BACKOFF_MAX)

    async def _session(self, peer: Peer) -> bool:
        """One connection, from hello to its end; True if it got past the hello."""
        serving = asyncio.create_task(peer.serve(), name="abgate-live-link-read")
        try:
            try:
                answer = await peer.request("hello", **self._hello())
            except (StoreUnavailable, RemoteError) as exc:
                log.warning("control process: hello failed (%s); retrying", exc)
                return False
            if self._flags:
                self._apply(answer.get("flags") or [])
            config = answer.get("config")
            if config is not None and self.on_config is not None:
                try:
                    await self.on_config(base64.b64decode(config))
                except Exception as exc:  # keep routing with the config we have
                    log.error("the control process's config could not be applied", exc_info=exc)
            if self._away_since is not None:
                log.warning("control process reachable again; flags re-read")
                self._away_since = None
            if self.synced.is_set():
                self.reconnects += 1
            self._peer = peer
            peer.send("applied", versions=self.table.versions())
            self.synced.set()
            await serving  # until the control process goes (it may be restarting)
            self._away_since = asyncio.get_running_loop().time()
            log.warning("control process gone; routing with the last flags, reconnecting")
            return True
        finally:
            self._peer = None
            await peer.aclose()
            await asyncio.gather(serving, return_exceptions=True)

    def _on_flags(self, message: dict[str, Any]) -> None:
        if self._flags:
            self._apply(message.get("flags") or [])
        if self._peer is not None:
            self._peer.send("applied", versions=self.table.versions())

    def _apply(self, flags: Sequence[dict[str, Any]]) -> None:
        for raw in flags:
            try:
                flag = flag_from_json(raw)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("control process sent a malformed flag %r: %s", raw, exc)
                continue
            if flag.name in self.table:  # one this config has not (yet): its reload adds it
                self.table.apply(flag)

    def collect(self) -> Iterator[Metric]:
        connected = metrics_catalogue.LIVE_CHANNEL_CONNECTED.new()
        connected.add_metric([], 1.0 if self.connected else 0.0)
        yield connected
        reconnects = metrics_catalogue.LIVE_CHANNEL_RECONNECTS.new()
        reconnects.add_metric([], self.reconnects)
        yield reconnects


class ChannelMeasurements:
    """The data plane's MeasurementStore in `abgate run` without Redis: each call a request
    to the control process, which applies it to its embedded store. An add carries its
    batch id and the flusher sends an unconfirmed batch again unchanged (proxy/measure.py),
    so a batch whose answer was lost is applied there once; a failure is StoreUnavailable
    (the flusher keeps everything for its next flush)."""

    def __init__(self, link: LiveStateLink) -> None:
        self._link = link

    async def start_phase(self, experiment: str, phase: Phase) -> None:
        await self._send(
            "start_phase",
            experiment=experiment,
            phase=[phase.id, phase.basis_points, phase.started_at],
        )

    async def add(self, batch: Mapping[MeasureKey, Sums], batch_id: str | None = None) -> None:
        sums = [[*key, s.count, s.total, s.total_sq] for key, s in batch.items()]
        await self._send("add", batch=batch_id, sums=sums)

    async def add_users(self, batch: Mapping[UsersKey, Sequence[int]]) -> None:
        await self._send("add_users", users=[[*key, list(bits)] for key, bits in batch.items()])

    async def _send(self, op: str, **fields: Any) -> None:
        try:
            await self._link.request(op, within=FLUSH_TIMEOUT, **fields)
        except RemoteError as exc:
            raise StoreUnavailable(f"the control process refused {op}: {exc}") from exc

    async def phases(self, experiment: str) -> list[Phase]:
        raise StoreUnavailable("measurements are read in the control process")

    async def read(self, experiment: str) -> tuple[list[Phase], dict[MeasureKey, Sums]]:
        raise StoreUnavailable("measurements are read in the control process")

    async def users(self, experiment: str) -> dict[tuple[int, str], int]:
        raise StoreUnavailable("measurements are read in the control process")

    # Outcomes waiting for their maturity are the outcomes API's, in the control process.
    async def hold(self, outcomes: Sequence[HeldOutcome]) -> None:
        raise StoreUnavailable("outcomes are held in the control process")

    async def mature(self, now: float) -> int:
        raise StoreUnavailable("outcomes are held in the control process")

    async def held(self) -> int:
        raise StoreUnavailable("outcomes are held in the control process")
