"""The live-state channel between `abgate run`'s control process and its data plane, with
both halves in this process on real sockets: flags pushed and answered, everything re-read
on a reconnect, measurement batches applied exactly once, the data plane asked what only it
knows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from abgate.config import Config
from abgate.control.control_half import control_half
from abgate.control.plane_half import data_plane_half
from abgate.control.serve import embedded
from abgate.state.flags import FlagTable, MemoryFlagStore
from abgate.state.live_channel import MAX_FRAME, Peer
from abgate.state.live_server import LiveStateServer
from abgate.state.measurements import MemoryMeasurements, Sums
from abgate.state.state_file import StateFile
from tests.servers import make_config, tables_reach, until

JSON = {"Content-Type": "application/json"}


async def decide(session: ClientSession, proxy: str, user: str) -> None:
    async with session.get(f"{proxy}/api/agent/a/decide", headers={"X-User-Id": user}) as response:
        assert response.status == 200
        await response.read()


async def test_a_write_is_answered_once_the_data_plane_routes_with_it(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents, percentage=10)) as running:
        table = running.data.flags
        assert table is not running.flags  # two tables, as in two processes
        for percentage in (35, 0, 100):
            async with session.post(
                f"{running.control_url}/api/flags/exp", json={"percentage": percentage}
            ) as response:
                assert response.status == 200
                version = (await response.json())["version"]
            # No waiting: the answer came after the data plane said it routes with it.
            assert table.get("exp").version == version
            assert table.get("exp").percentage == percentage
        async with session.post(f"{running.control_url}/api/rollback", json={}) as response:
            body = await response.json()
        assert response.status == 200, body
        (instance,) = body["instances"]
        assert instance["address"] == running.proxy_url
        assert instance["converged"] is True
        assert table.get("exp").percentage == 0
        async with session.get(f"{running.control_url}/api/breakers") as response:
            breakers = (await response.json())["instances"]
        assert breakers[0]["breakers"] == {"control": "closed", "treatment": "closed"}


async def test_the_data_plane_re_reads_everything_when_the_control_process_comes_back(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    """The control process restarts; meanwhile a change lands in its state file (as another
    process would write it) and requests go on. The data plane routes on, keeps its
    measurements, and takes the new flag and delivers the sums once it is back."""
    state = tmp_path / "flags.json"
    config = make_config(agents, percentage=50, flags={"state_file": str(state)})
    channel = tmp_path / "live.sock"
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(_stoppable(control_half(config, channel)))
        plane = await stack.enter_async_context(data_plane_half(config, channel))
        for user in range(20):
            await decide(session, plane.proxy_url, f"a{user}")
        await plane.plane.flush_measurements()
        await first.stop()  # saves measurements and flags: 20 answers in all
        await until(lambda: not plane.link.connected)

        for user in range(30):  # nobody to flush to: kept
            await decide(session, plane.proxy_url, f"b{user}")
        await plane.plane.flush_measurements()
        written = MemoryFlagStore(FlagTable.from_config(config), StateFile(state))
        written.restore()
        (flag,) = await written.set_percentages({"exp": 1500}, by="test", reason="while away")
        assert plane.flags.get("exp").version < flag.version

        second = await stack.enter_async_context(control_half(config, channel))
        await tables_reach([plane.flags], "exp", flag.version)  # read again on the hello
        assert plane.flags.get("exp").percentage == 15
        await plane.plane.flush_measurements()  # what was kept goes now
        _, sums = await second.worker.store.read("exp")
        assert sum(s.count for k, s in sums.items() if k[3] == "error") == 50
        assert plane.link.reconnects == 1


class _Stoppable:
    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self._stopped = False

    async def start(self) -> Any:
        self.half = await self._manager.__aenter__()
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.half, name)

    async def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            await self._manager.__aexit__(None, None, None)


@asynccontextmanager
async def _stoppable(manager: Any) -> AsyncIterator[Any]:
    """A context that the test may also leave early (`await it.stop()`)."""
    wrapper = _Stoppable(manager)
    await wrapper.start()
    try:
        yield wrapper
    finally:
        await wrapper.stop()


async def test_a_batch_whose_answer_was_lost_is_applied_once(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    """A relay between the two drops the control process's first answer to a measurement
    batch and cuts the connection: the data plane's flusher sends the same batch (same id)
    again once it reconnected, and the control process answers it without adding it
    twice."""
    config = make_config(agents, percentage=50)
    channel, relayed = tmp_path / "live.sock", tmp_path / "relay.sock"
    async with (
        control_half(config, channel) as control,
        _DroppingRelay(relayed, channel) as relay,
        data_plane_half(config, relayed) as plane,
    ):
        for user in range(10):
            await decide(session, plane.proxy_url, f"u{user}")
        await plane.plane.flush_measurements()  # applied there, its answer dropped here
        assert relay.dropped == 1
        await until(lambda: plane.link.connected)
        await plane.plane.flush_measurements()  # the same batch again: answered, not added
        assert control.server.batches_repeated == 1
        _, sums = await control.worker.store.read("exp")
        assert sum(s.count for k, s in sums.items() if k[3] == "error") == 10
        assert plane.link.reconnects == 1


class _DroppingRelay:
    """A Unix-socket relay that forwards frames both ways but, the first time the control
    process answers an "add" request, cuts both connections instead."""

    def __init__(self, listen: Path, target: Path) -> None:
        self._listen, self._target = listen, target
        self.dropped = 0
        self._measurement_ids: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> _DroppingRelay:
        self._server = await asyncio.start_unix_server(self._accept, path=str(self._listen))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(str(self._target))
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await asyncio.gather(
                self._pump(reader, upstream_writer, watch_requests=True),
                self._pump(upstream_reader, writer, watch_requests=False),
            )
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            upstream_writer.close()
            self._tasks.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, watch_requests: bool
    ) -> None:
        import orjson

        while True:
            head = await reader.readexactly(4)
            body = await reader.readexactly(int.from_bytes(head, "big"))
            assert len(body) <= MAX_FRAME
            message = orjson.loads(body)
            if watch_requests and message.get("op") == "add":
                self._measurement_ids.add(message["id"])
            if (
                not watch_requests
                and message.get("op") == "reply"
                and message.get("id") in self._measurement_ids
                and not self.dropped
            ):
                self.dropped += 1
                raise ConnectionError("answer dropped")
            writer.write(head + body)
            await writer.drain()


async def test_a_batch_is_applied_once_by_its_id_and_the_ids_survive_a_restart(
    tmp_path: Path,
) -> None:
    state = StateFile(tmp_path / "state.json")
    store = MemoryMeasurements(state)
    key = ("exp", 1, "control", "latency", 3)
    await store.add({key: Sums(2, 0.5, 0.13)}, "plane-a:1")
    await store.add({key: Sums(2, 0.5, 0.13)}, "plane-a:1")  # sent again: a no-op
    store.save()
    restarted = MemoryMeasurements(StateFile(tmp_path / "state.json"))
    assert restarted.seen("plane-a:1")  # a resend after the restart is known too
    await restarted.add({key: Sums(2, 0.5, 0.13)}, "plane-a:1")
    await restarted.add({key: Sums(1, 0.25, 0.0625)}, "plane-a:2")
    _, sums = await restarted.read("exp")
    assert sums[key] == Sums(3, 0.75, 0.1925)


async def test_a_frame_over_the_limit_closes_the_channel_not_the_process(
    tmp_path: Path, agents: dict[str, str]
) -> None:
    config: Config = make_config(agents)
    path = tmp_path / "live.sock"
    async with LiveStateServer(path, FlagTable.from_config(config), owns_flags=True) as server:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write((MAX_FRAME + 1).to_bytes(4, "big"))
        assert await reader.read() == b""  # closed by the server
        writer.close()
        reader, writer = await asyncio.open_unix_connection(str(path))
        peer = Peer(reader, writer, name="test")
        serving = asyncio.create_task(peer.serve())
        answer = await peer.request(
            "hello", instance="t", address="http://x", pid=1, started_at=0.0
        )
        assert [flag["name"] for flag in answer["flags"]] == ["exp"]
        assert [link.id for link in server.planes] == ["t"]
        await peer.aclose()
        await serving


async def test_a_data_plane_started_first_waits_quietly_for_its_control_process(
    agents: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`abgate run` starts both halves at once: the data plane may try the socket before the
    control process has made it. That is no outage: retried quietly, no warning, and none
    that it is reachable again."""
    caplog.set_level(logging.DEBUG, logger="abgate.channel")
    config = make_config(agents, percentage=50)
    channel = tmp_path / "live.sock"
    entered, done = asyncio.Event(), asyncio.Event()

    async def plane() -> None:
        async with data_plane_half(config, channel):
            entered.set()
            await done.wait()

    task = asyncio.create_task(plane())
    try:
        await until(lambda: any("not listening yet" in r.message for r in caplog.records))
        async with control_half(config, channel):
            await entered.wait()
            done.set()
            await task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    said = [r.message for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in said if "control process" in m], said
