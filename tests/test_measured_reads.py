"""One read of the measurements for the statistics worker and the rollout controller: a read
is shared with a caller that accepts its age, joined while in flight, and a failure reaches
every caller that joined it; in `abgate run` the worker and the controller hold one reader,
so the gates decide on the numbers the page shows."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import ClientSession

from abgate.control.measured import Reads
from abgate.control.offload import StatisticsProcess
from abgate.control.serve import embedded
from abgate.state.errors import StoreUnavailable
from abgate.state.measurements import MeasureKey, MemoryMeasurements, Phase, Sums
from tests.servers import make_config


class CountedStore(MemoryMeasurements):
    """The embedded store, counting its reads; `failing` makes a read fail as Redis would."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.failing = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def read(self, experiment: str) -> tuple[list[Phase], dict[MeasureKey, Sums]]:
        self.reads += 1
        await self.gate.wait()
        if self.failing:
            raise StoreUnavailable("measurements: Redis is down")
        return await super().read(experiment)


async def test_a_read_is_shared_within_the_age_a_caller_accepts() -> None:
    store = CountedStore()
    await store.add({("exp", 1, "control", "error", 0): Sums(3, 1.0, 1.0)})
    reads = Reads(store)
    first = await reads.read("exp")
    assert first.sums[("exp", 1, "control", "error", 0)].count == 3
    assert (await reads.read("exp", max_age=3600)) is first  # the controller, within a tick
    await store.add({("exp", 1, "control", "error", 0): Sums(2, 0.0, 0.0)})
    fresh = await reads.read("exp")  # the worker: always its own read
    assert fresh is not first
    assert fresh.sums[("exp", 1, "control", "error", 0)].count == 5
    assert store.reads == 2


async def test_reads_in_flight_are_joined_and_share_a_failure() -> None:
    store = CountedStore()
    reads = Reads(store)
    store.gate.clear()
    both = asyncio.gather(reads.read("exp"), reads.read("exp"))
    await asyncio.sleep(0)  # both callers are waiting on the one read
    store.gate.set()
    one, other = await both
    assert one is other
    assert store.reads == 1

    store.failing = True
    store.gate.clear()
    failed = asyncio.gather(reads.read("exp"), reads.read("exp"), return_exceptions=True)
    await asyncio.sleep(0)
    store.gate.set()
    assert [type(r) for r in await failed] == [StoreUnavailable, StoreUnavailable]
    assert store.reads == 2
    store.failing = False
    assert (await reads.read("exp")) is not one  # a failure is not kept: read again
    assert store.reads == 3


async def test_the_worker_and_the_controller_hold_one_reader(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents)) as running:
        assert running.rollouts.reads is running.worker.reads
        assert running.rollouts.reads.store is running.backend.measurements


async def test_the_gates_and_the_reports_are_computed_in_the_statistics_process(
    session: ClientSession, agents: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`decide` and the worker's `evaluate` (scipy; a stage's first sizing takes about a
    second) run in a process of their own: not on the loop that serves the control API (and
    in one process the proxy), nor in a thread that a busy loop starves of the GIL."""
    config = make_config(agents, percentage=0, experiment={"rollout": {"tick": "100ms"}})
    ran: list[str] = []
    async with embedded(config) as running:
        statistics = running.worker.offload
        assert isinstance(statistics, StatisticsProcess)
        assert running.rollouts.offload is statistics  # one process for both
        real = statistics.run

        async def recorded(function: Callable[..., Any], *args: object) -> Any:
            ran.append(function.__name__)
            return await real(function, *args)

        monkeypatch.setattr(statistics, "run", recorded)
        await running.worker.evaluate_all()
        async with session.post(f"{running.control_url}/api/rollouts/exp", json={}) as response:
            assert response.status == 201, await response.text()
        async with session.get(f"{running.control_url}/api/rollouts/exp/verdict") as response:
            assert response.status == 200, await response.text()
        worker_pid = await real(os.getpid)
    assert {"decide", "evaluate"} <= set(ran)
    assert worker_pid != os.getpid()
    with pytest.raises(ProcessLookupError):  # shut down with its owner, and reaped
        os.kill(worker_pid, 0)


async def test_a_statistics_process_that_dies_is_replaced_and_counted(
    session: ClientSession, agents: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async with embedded(make_config(agents)) as running:
        statistics = running.worker.offload
        assert isinstance(statistics, StatisticsProcess)
        pids = [await statistics.run(os.getpid)]
        for _ in range(2):
            os.kill(pids[-1], signal.SIGKILL)  # as the OOM killer would
            pids.append(await statistics.run(os.getpid))  # run again on a new one
        assert len({*pids, os.getpid()}) == 4
        assert statistics.replaced == 2
        await running.worker.evaluate_all()
        assert running.worker.failing == {}  # the worker's own calls work on the new one
        async with session.get(f"{running.control_url}/metrics") as response:
            assert "abgate_stats_process_restarts_total 2.0" in await response.text()
    died = [r for r in caplog.records if "its worker process died" in r.getMessage()]
    assert len(died) == 1  # logged once, counted every time
