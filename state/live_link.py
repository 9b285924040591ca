"""The data plane's end of the live-state channel (state/live_channel.py).

`LiveStateLink` connects to the control process, retrying with backoff while it is away
(it may be restarting), and says hello: who it is, where it listens, which config file it
runs. The answer carries every flag, applied at once, so a change missed while apart is never
lost (as a Redis reader re-reads everything on each reconnect); after that each change
arrives as a notice, is applied to the FlagTable, and the versions now routed with go back
(what a rollback waits for). The control process's requests (breaker states, metrics,
reload, ...) are answered by handlers the data plane's owner wires in.

`ChannelMeasurements` is the measurement store the data plane flushes to when there is no
Redis: each flush goes over as one batch with an id, applied exactly once by the control
process (MemoryMeasurements.apply_batch), resent as is until answered.

Nothing here waits on the request path: the link is one owned task, the flushes are the
flusher's.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from state.errors import StoreUnavailable
from state.flag_file import flag_from_json
from state.flags import FlagTable
from state.live_channel import Peer, RemoteError, RequestHandler
from state.measurements import MeasureKey, Phase, Sums, UsersKey

log = logging.getLogger("abgate.channel")
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0
FIRST_BACKOFF_MAX = 0.2
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
        # Run after each hello (held measurements go out without waiting for new ones).
        self.on_connect: list[Callable[[], Awaitable[None]]] = []
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
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self._path)
            except OSError as exc:
                if self._away_since is None:
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
            for callback in self.on_connect:
                await callback()
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
        connected = GaugeMetricFamily(
            "abgate_live_channel_connected",
            "1 when this data plane is connected to its control process (abgate run).",
        )
        connected.add_metric([], 1.0 if self.connected else 0.0)
        yield connected
        reconnects = CounterMetricFamily(
            "abgate_live_channel_reconnects",
            "Connections to the control process lost and made again (flags re-read each time).",
        )
        reconnects.add_metric([], self.reconnects)
        yield reconnects


@dataclass
class MeasurementBatch:
    """Deltas gathered between two deliveries: phases started, sums, distinct-users bits."""

    phases: list[tuple[str, Phase]] = field(default_factory=list)
    sums: dict[MeasureKey, Sums] = field(default_factory=dict)
    users: dict[UsersKey, set[int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.phases or self.sums or self.users)

    def as_json(self) -> dict[str, Any]:
        return {
            "phases": [
                [experiment, phase.id, phase.basis_points, phase.started_at]
                for experiment, phase in self.phases
            ],
            "sums": [[*key, s.count, s.total, s.total_sq] for key, s in self.sums.items()],
            "users": [[*key, sorted(bits)] for key, bits in self.users.items()],
        }

    @classmethod
    def from_json(cls, message: Mapping[str, Any]) -> MeasurementBatch:
        """Raises KeyError, TypeError or ValueError on a malformed batch."""
        batch = cls()
        for experiment, phase_id, basis_points, started in message["phases"]:
            batch.phases.append(
                (str(experiment), Phase(int(phase_id), int(basis_points), float(started)))
            )
        for experiment, phase, arm, metric, cluster, count, total, total_sq in message["sums"]:
            key = (str(experiment), int(phase), str(arm), str(metric), int(cluster))
            batch.sums[key] = Sums(int(count), float(total), float(total_sq))
        for experiment, phase, arm, bits in message["users"]:
            batch.users[(str(experiment), int(phase), str(arm))] = {int(bit) for bit in bits}
        return batch


class ChannelMeasurements:
    """The data plane's MeasurementStore in `abgate run` without Redis.

    It takes custody of what it is given and never raises: the flusher would keep (and
    later resend, merged into new sums) what it handed over, and a batch that the control
    process applied but whose answer was lost would count twice. Here a batch sent keeps its
    id and content until answered; new deltas wait beside it, merged (memory bounded by the
    keys, not the requests), and go as the next batch."""

    def __init__(self, link: LiveStateLink, instance: str) -> None:
        self._link = link
        link.on_connect.append(self._deliver)  # what was held goes as soon as it can
        self._instance = instance
        self._next = MeasurementBatch()
        self._sent: tuple[str, dict[str, Any]] | None = None  # (id, content) unanswered
        self._sequence = 0
        self._lock = asyncio.Lock()  # flusher and an explicit flush; never a request
        self._failing = False
        self.failures = 0

    async def start_phase(self, experiment: str, phase: Phase) -> None:
        self._next.phases.append((experiment, phase))
        await self._deliver()

    async def add(self, batch: Mapping[MeasureKey, Sums]) -> None:
        for key, sums in batch.items():
            self._next.sums.setdefault(key, Sums()).merge(sums)
        await self._deliver()

    async def add_users(self, batch: Mapping[UsersKey, Sequence[int]]) -> None:
        for key, bits in batch.items():
            self._next.users.setdefault(key, set()).update(bits)
        await self._deliver()

    @property
    def pending(self) -> bool:
        return self._sent is not None or bool(self._next)

    async def _deliver(self) -> None:
        async with self._lock:
            while True:
                if self._sent is None:
                    if not self._next:
                        return
                    self._sequence += 1
                    batch_id = f"{self._instance}:{self._sequence}"
                    self._sent, self._next = (batch_id, self._next.as_json()), MeasurementBatch()
                batch_id, content = self._sent
                try:
                    await self._link.request(
                        "measurements", within=FLUSH_TIMEOUT, batch=batch_id, **content
                    )
                except (StoreUnavailable, RemoteError) as exc:
                    self.failures += 1
                    if not self._failing:
                        log.warning("measurements kept for the next flush: %s", exc)
                    self._failing = True
                    return
                self._sent, self._failing = None, False

    async def phases(self, experiment: str) -> list[Phase]:
        raise StoreUnavailable("measurements are read in the control process")

    async def read(self, experiment: str) -> tuple[list[Phase], dict[MeasureKey, Sums]]:
        raise StoreUnavailable("measurements are read in the control process")

    async def users(self, experiment: str) -> dict[tuple[int, str], int]:
        raise StoreUnavailable("measurements are read in the control process")

    def collect(self) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "abgate_live_channel_flush_failures",
            "Measurement flushes the control process did not answer (kept and sent again).",
        )
        failures.add_metric([], self.failures)
        yield failures
