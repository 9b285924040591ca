"""The control process's end of the live-state channel (state/live_channel.py).

It listens; each data plane that connects says hello (with the flags it routes with: a newer
one is taken, when this process restarted without its state) and is answered with every
flag (when this process owns them: the embedded store) and, if it runs another config file
than this process, with this process's config. After that:

    control -> data plane  "flags" (notice): each change of the control process's table, in
                           order; the data plane answers with an "applied" notice carrying
                           the versions it routes with (what a rollback waits for)
                           requests the control API makes: status, breakers, health, metrics,
                           reload, ... (control/live_plane.py)
    data plane -> control  "start_phase", "add", "add_users" (requests): its flushes, into
                           the embedded store; an add carries its batch id, and a batch sent
                           again because its answer was lost is answered, not applied again

`LocalFlagStore` is the embedded FlagStore as `abgate run` serves it: the memory store's
writes, answered once every connected data plane routes with them (bounded), and the
instances the channel knows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.core import Metric

from abgate.config import metrics_catalogue
from abgate.state.errors import StoreUnavailable
from abgate.state.flags import (
    Flag,
    FlagTable,
    Instance,
    MemoryFlagStore,
    flag_from_json,
    flag_to_json,
)
from abgate.state.live_channel import Peer, RemoteError
from abgate.state.measurements import MemoryMeasurements, Phase, Sums

log = logging.getLogger("abgate.channel")
STATUS_TIMEOUT = 2.0
WRITE_WAIT = 1.0  # how long a flag write waits for the data planes to route with it


@dataclass
class PlaneLink:
    """One connected data plane, as it introduced itself and last reported."""

    peer: Peer
    id: str
    address: str
    pid: int
    started_at: float
    applied: dict[str, int] = field(default_factory=dict)
    breakers: dict[str, str] = field(default_factory=dict)
    heard_at: float = 0.0

    def instance(self) -> Instance:
        return Instance(
            self.id,
            self.address,
            self.pid,
            self.started_at,
            self.heard_at,
            dict(self.applied),
            dict(self.breakers),
        )


ConfigSource = Callable[[], tuple[str | None, bytes | None]]  # (digest, pickled Config)


class LiveStateServer:
    def __init__(
        self,
        path: str | Path,
        table: FlagTable,
        *,
        owns_flags: bool,
        measurements: MemoryMeasurements | None = None,
        config: ConfigSource | None = None,
    ) -> None:
        self._path = str(path)
        self.table = table
        self._owns_flags = owns_flags  # embedded: flags go to the data planes from here
        self._measurements = measurements  # embedded: their flushes come here
        self._config = config
        self.planes: list[PlaneLink] = []
        self.on_hello: list[Callable[[PlaneLink], None]] = []
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._progress = asyncio.Event()  # replaced after each report: wakes the waiters
        self._unsubscribe: Callable[[], None] | None = None
        self._closing = False
        self.batches_applied = 0
        self.batches_repeated = 0

    async def __aenter__(self) -> LiveStateServer:
        self._server = await asyncio.start_unix_server(self._connected, path=self._path)
        if self._owns_flags:
            self._unsubscribe = self.table.subscribe(self._push)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._server is not None:
            self._server.close()
        for link in list(self.planes):
            await link.peer.aclose()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = Peer(reader, writer, name="the data plane")
        link: list[PlaneLink] = []  # set by the hello
        peer.on_request("hello", lambda message: self._hello(peer, message, link))
        peer.on_request("start_phase", self._start_phase)
        peer.on_request("add", self._add)
        peer.on_request("add_users", self._add_users)
        peer.on_request("config", self._current_config)
        peer.on_notice("applied", lambda message: self._applied(link, message))
        try:
            await peer.serve()
        finally:
            for gone in link:
                self.planes.remove(gone)
                self._progressed()
                if not self._closing:  # stopping or restarting (abgate run says which)
                    log.info("data plane %s (pid %d) disconnected", gone.id, gone.pid)
            self._connections.discard(task)

    async def _hello(self, peer: Peer, message: dict[str, Any], link: list[PlaneLink]) -> Any:
        if link:
            raise ValueError("a second hello on one connection")
        plane = PlaneLink(
            peer,
            str(message["instance"]),
            str(message["address"]),
            int(message["pid"]),
            float(message["started_at"]),
            heard_at=time.time(),
        )
        link.append(plane)
        self.planes.append(plane)
        log.info("data plane %s (pid %d) connected from %s", plane.id, plane.pid, plane.address)
        if self._owns_flags:
            self._adopt(message.get("flags") or [])
        for callback in self.on_hello:
            callback(plane)
        answer: dict[str, Any] = {"flags": None, "config": None}
        if self._owns_flags:
            answer["flags"] = [flag_to_json(flag) for flag in self.table.all()]
        if self._config is not None:
            digest, blob = self._config()
            if blob is not None and digest != message.get("config_digest"):
                answer["config"] = base64.b64encode(blob).decode()
        return answer

    async def _current_config(self, message: dict[str, Any]) -> Any:
        """This process's config, for a data plane that cannot read the file at a restart."""
        digest, blob = self._config() if self._config is not None else (None, None)
        if blob is None:
            raise ValueError("this control process was not started from a config file")
        return {"config": base64.b64encode(blob).decode(), "digest": digest}

    def _adopt(self, flags: list[dict[str, Any]]) -> None:
        """Newer flags than this process holds, from a data plane that outlived it: a control
        process restarted without a state file (or with an older one) must not send the
        data plane back to older percentages, nor hand out versions it already used."""
        adopted = 0
        for raw in flags:
            flag = flag_from_json(raw)
            adopted += flag.name in self.table and self.table.apply(flag)
        if adopted:
            log.warning("took %d newer flag(s) from the data plane that outlived us", adopted)

    def _applied(self, link: list[PlaneLink], message: dict[str, Any]) -> None:
        if not link:
            return
        link[0].applied = {str(k): int(v) for k, v in message["versions"].items()}
        link[0].heard_at = time.time()
        self._progressed()

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def _store(self) -> MemoryMeasurements:
        if self._measurements is None:
            raise ValueError("this control process keeps no measurements (they go to Redis)")
        return self._measurements

    async def _start_phase(self, message: dict[str, Any]) -> None:
        phase_id, basis_points, started = message["phase"]
        phase = Phase(int(phase_id), int(basis_points), float(started))
        await self._store().start_phase(str(message["experiment"]), phase)

    async def _add(self, message: dict[str, Any]) -> None:
        """One flush's sums, once by its batch id (a resend after a lost answer is known)."""
        store, batch_id = self._store(), message.get("batch")
        sums = {}
        for experiment, phase, arm, metric, cluster, count, total, total_sq in message["sums"]:
            key = (str(experiment), int(phase), str(arm), str(metric), int(cluster))
            sums[key] = Sums(int(count), float(total), float(total_sq))
        if batch_id is not None and store.seen(str(batch_id)):
            self.batches_repeated += 1
            return
        await store.add(sums, None if batch_id is None else str(batch_id))
        self.batches_applied += 1

    async def _add_users(self, message: dict[str, Any]) -> None:
        users = {
            (str(experiment), int(phase), str(arm)): [int(bit) for bit in bits]
            for experiment, phase, arm, bits in message["users"]
        }
        await self._store().add_users(users)

    def _push(self, flag: Flag) -> None:
        """Every change of the table (a write, a reload's new experiment), to every plane."""
        for link in self.planes:
            with contextlib.suppress(StoreUnavailable):  # going: it re-reads all on return
                link.peer.send("flags", flags=[flag_to_json(flag)])

    # -- what the control process asks ---------------------------------------------------

    def plane(self) -> PlaneLink:
        """The data plane (the first, if several are connected); StoreUnavailable if none."""
        if not self.planes:
            raise StoreUnavailable("the data plane is not connected (starting or restarting?)")
        return self.planes[0]

    async def ask(self, op: str, *, within: float = 10.0, **fields: Any) -> Any:
        """A request to the data plane; KeyError for an unknown name there."""
        try:
            return await self.plane().peer.request(op, within=within, **fields)
        except RemoteError as exc:
            if exc.kind == "not_found":
                raise KeyError(str(exc)) from None
            raise

    async def connected(self, within: float) -> bool:
        """Wait until a data plane has said hello; False after `within` seconds."""
        return await self._until(lambda: bool(self.planes), within)

    async def disconnected(self, within: float) -> bool:
        """Wait until no data plane is connected (stopping together: its last measurements
        come first); False after `within` seconds."""
        return await self._until(lambda: not self.planes, within)

    async def converged(self, flags: list[Flag], within: float) -> bool:
        """Wait until every connected data plane routes with `flags`; False after `within` s."""
        return await self._until(
            lambda: all(
                all(link.applied.get(flag.name, 0) >= flag.version for flag in flags)
                for link in self.planes
            ),
            within,
        )

    async def _until(self, done: Callable[[], bool], within: float) -> bool:
        deadline = asyncio.get_running_loop().time() + within
        while not done():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def instances(self) -> list[Instance]:
        """Every connected data plane, its applied versions and breaker states as of now."""
        out = []
        for link in list(self.planes):
            try:
                status = await link.peer.request("status", within=STATUS_TIMEOUT)
            except (StoreUnavailable, RemoteError):
                pass  # reported as last heard from
            else:
                link.applied = {str(k): int(v) for k, v in status["applied"].items()}
                link.breakers = {str(k): str(v) for k, v in status["breakers"].items()}
                link.heard_at = time.time()
            out.append(link.instance())
        return out

    def collect(self) -> Iterator[Metric]:
        connected = metrics_catalogue.DATA_PLANES_CONNECTED.new()
        connected.add_metric([], len(self.planes))
        yield connected


class LocalFlagStore:
    """The embedded FlagStore of `abgate run`: writes go to the memory store (persisted
    first), and are answered once the data planes route with them, within WRITE_WAIT (a
    data plane that is away re-reads everything when it comes back)."""

    def __init__(self, store: MemoryFlagStore, server: LiveStateServer) -> None:
        self._store = store
        self._server = server
        self.table = store.table

    async def set_percentages(
        self,
        changes: Mapping[str, int],
        *,
        by: str,
        reason: str,
        expected: Mapping[str, int] | None = None,
    ) -> list[Flag]:
        flags = await self._store.set_percentages(changes, by=by, reason=reason, expected=expected)
        await self._server.converged(flags, WRITE_WAIT)
        return flags

    async def history(self, name: str, limit: int) -> list[dict[str, object]]:
        return await self._store.history(name, limit)

    async def instances(self) -> list[Instance]:
        return await self._server.instances()
