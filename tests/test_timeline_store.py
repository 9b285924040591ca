"""The timeline in PostgreSQL (control/timeline_store.py), on a real PostgreSQL: bounded as in
memory (thinned rows deleted), read back whole with the rollout's decisions, and the charts
survive a restart of abgate."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession

from abgate.control.serve import embedded
from abgate.control.timeline import MetricPoint, Point, RolloutView, Series
from abgate.control.timeline_store import TimelineStore
from abgate.state.history.rows import Json
from abgate.state.history.writer import HistoryWriter, utc
from tests.postgres_server import PostgresServer, postgres_server
from tests.test_history import decide, history_config


@pytest.fixture
async def postgres() -> AsyncIterator[PostgresServer]:
    async with postgres_server() as server:
        yield server


def _point(tick: int) -> Point:
    metric = MetricPoint("guardrail", tick * 0.001, -0.01, 0.02, -0.05, 0.3, "ok")
    view = RolloutView("running", 1, "hold", "insufficient", f"need more ({tick})", 12.5, {
        "control": 100, "treatment": 40}, None)  # fmt: skip
    return Point(
        1_800_000_000.0 + tick,
        2,
        25.0,
        {"control": tick * 3, "treatment": tick},
        {"latency": metric},
        view,
        {"control": [tick, 2 * tick, 0], "treatment": [0, tick, 1]},
    )


async def test_the_stored_series_is_thinned_as_in_memory_and_read_back_whole(
    postgres: PostgresServer,
) -> None:
    writer = HistoryWriter(postgres.url, instance="t", capacity=10_000, retention_days=30)
    store = TimelineStore(writer)
    series = Series(capacity=8)
    try:
        for tick in range(1, 101):
            kept, thinned = series.add(_point(tick))
            store.saved("exp", series, kept, thinned)
        writer.add(
            "rollout_events", utc(1_800_000_050.0), "exp", "running", "started", "stage 0: 5%",
            "start", "ship <it> & see", Json({"plan": None}), "alice",
        )  # fmt: skip
        await writer.flush()
        rows = await writer.read(
            "SELECT tick FROM ab_testing.timeline_points WHERE experiment = $1 ORDER BY tick",
            "exp",
        )
        assert [row["tick"] for row in rows] == series.kept  # the thinned ones deleted
        assert len(rows) <= 8
        loaded = await store.load(["exp", "never-ticked"])
    finally:
        await writer.aclose()
    assert set(loaded) == {"exp"}
    restored = loaded["exp"]
    assert restored.stride == series.stride == 16
    assert restored.ticks == 100
    assert restored.kept == series.kept
    assert restored.points == series.points  # every field, as it was
    [event] = restored.events
    assert event["reason"] == "ship <it> & see"
    assert event["transition"] == "started"
    assert event["time"] == 1_800_000_050.0
    # The series goes on where it stopped: the next kept tick is the stride's next multiple.
    for tick in range(101, 113):
        restored.add(_point(tick))
    assert restored.kept[-1] == 112


async def test_the_charts_survive_a_restart(
    postgres: PostgresServer, agents: dict[str, str], session: ClientSession
) -> None:
    config = history_config(agents, postgres)
    path = "/api/experiments/exp/timeline"
    async with embedded(config) as running:
        for user in range(20):
            await decide(session, running, f"u{user}")
        await running.plane.flush_measurements()
        for _ in range(3):
            await running.worker.record(await running.worker.evaluate_all())
        async with session.get(running.control_url + path) as response:
            before = await response.json()
    assert len(before["points"]) >= 3
    started = time.time()
    async with embedded(config) as running, session.get(running.control_url + path) as response:
        after = await response.json()
    assert after["ticks"] >= before["ticks"]
    # What was kept before the restart, as it was; the new process's ticks come after.
    old = [p for p in after["points"] if p["t"] < started]
    assert [p["t"] for p in old] == [p["t"] for p in before["points"]]
    assert [p["samples"] for p in old] == [p["samples"] for p in before["points"]]
    assert old[-1]["percentage"] == 50
