"""Measurements are stored exactly once and never made non-finite: an overflowing outcome is
refused, a stored sum never becomes inf, an unreadable part of the state file loses that part
only, and a batch of deltas is applied to Redis atomically and once, Redis killed mid-batch
included (a real redis-server, the connection cut at the exact moment by a forwarder)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession

from abgate.control.serve import embedded
from abgate.proxy.measure import Measurements
from abgate.state.measurements import MemoryMeasurements, Phase, Sums
from abgate.state.redis_client import connect
from abgate.state.redis_measurements import RedisMeasurements
from abgate.state.state_file import StateFile
from tests.cut_proxy import Cut, cut_proxy
from tests.redis_server import RedisServer, redis_server
from tests.servers import make_config, until

KEY = ("exp", 1, "treatment", "satisfaction", 3)
PREFIX = "abgate"


def record(measurements: Measurements, values: range) -> None:
    """What a recorder does on the request path: add to the pending sums in memory."""
    for value in values:
        measurements.sums(KEY).add(float(value))


async def stored(redis: RedisServer) -> Sums:
    async with connect(redis.url) as client:
        _, sums = await RedisMeasurements(client, PREFIX).read("exp")
    return sums.get(KEY, Sums())


async def test_an_outcome_too_large_to_square_is_refused_naming_the_item(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    config = make_config(agents, percentage=50, flags={"state_file": str(state)})
    good = {
        "experiment": "exp",
        "arm": "treatment",
        "metric": "satisfaction",
        "value": 4.5,
        "user": "u1",
    }
    async with embedded(config) as running:
        outcomes = running.control_url + "/api/outcomes"
        async with session.post(outcomes, json=[good] * 100) as response:
            assert response.status == 200
        for value in (1e308, -1e200, 2e15):
            async with session.post(outcomes, json=[good, {**good, "value": value}]) as response:
                assert response.status == 400
                error = (await response.json())["error"]
            assert error.startswith("[1].value: "), error
            assert "too large" in error, error
    # The state file keeps the 100 samples; a restart reads them all back.
    restored = MemoryMeasurements(StateFile(state))
    _, sums = await restored.read("exp")
    assert sum(s.count for s in sums.values()) == 100
    assert sum(s.total for s in sums.values()) == 450.0


async def test_a_delta_that_would_make_a_sum_non_finite_is_never_persisted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = StateFile(tmp_path / "state.json")
    store = MemoryMeasurements(state)
    await store.add({KEY: Sums(10, 5.0, 1.5e308)})  # finite, near the largest double
    with caplog.at_level(logging.ERROR, logger="abgate.measurements"):
        await store.add({KEY: Sums(1, 1e154, 1e308)})
        await store.add({KEY: Sums(1, 1e154, 1e308)})  # skipped again: logged once
    await store.add({KEY: Sums(2, 1.0, 0.5)})
    store.save()
    assert store.skipped.count == 2
    assert len([r for r in caplog.records if "non-finite" in r.getMessage()]) == 1
    _, sums = await MemoryMeasurements(StateFile(tmp_path / "state.json")).read("exp")
    assert sums[KEY] == Sums(12, 6.0, 1.5e308 + 0.5)


async def test_accepted_outcomes_reach_the_state_file_with_nothing_after_them(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    """A trial posted outcomes, then nothing, then killed the process: the batch was lost,
    because the store saved only on a change at least 5 s after its last save. An owned
    task now saves what changed every 5 s, so the file has them without another change."""
    state = tmp_path / "state.json"
    config = make_config(agents, percentage=50, flags={"state_file": str(state)})
    item = {"experiment": "exp", "arm": "treatment", "metric": "satisfaction", "value": 4.5}
    item["user"] = "u1"

    def saved() -> int:
        section = StateFile(state).section("measurements") if state.exists() else None
        sums = section.get("sums", []) if isinstance(section, dict) else []
        return sum(entry[5] for entry in sums if entry[3] == "satisfaction")

    async with embedded(config) as running:
        async with session.post(running.control_url + "/api/outcomes", json=[item] * 3) as sent:
            assert sent.status == 200
        await until(lambda: saved() == 3, timeout=30)  # no other change, no shutdown


async def test_an_unreadable_part_of_the_state_file_loses_that_part_only(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    good = ["exp", 1, "control", "satisfaction", 5, 10, 20.0, 50.0]
    path.write_bytes(
        orjson.dumps(
            {
                "format": 1,
                "measurements": {
                    "phases": [["exp", 1, 5000, 1.0], ["exp", "two", 5000, 2.0]],
                    "sums": [good, [*KEY, 100, 1e154, None], ["exp", 1, "treatment"]],
                    "users": [["exp", 1, "control", "not base64 zlib"]],
                },
            }
        )
    )
    store = MemoryMeasurements(StateFile(path))
    phases, sums = await store.read("exp")
    assert phases == [Phase(1, 5000, 1.0)]
    assert sums == {("exp", 1, "control", "satisfaction", 5): Sums(10, 20.0, 50.0)}
    assert await store.users("exp") == {}


@pytest.fixture
async def durable_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path, durable=True) as server:
        yield server


async def test_a_batch_is_applied_whole_or_not_at_all(durable_redis: RedisServer) -> None:
    """A delta that would overflow a stored sum is skipped whole (count, sum and sum of
    squares), never half written; the batch's other sums are applied."""
    async with connect(durable_redis.url) as client:
        store = RedisMeasurements(client, PREFIX)
        other = ("exp", 1, "control", "satisfaction", 3)
        await store.add({KEY: Sums(1, 1e154, 1e308)})
        await store.add({KEY: Sums(1, 1e154, 1e308), other: Sums(2, 3.0, 5.0)})
        _, sums = await store.read("exp")
    assert sums[KEY] == Sums(1, 1e154, 1e308)  # not count 2 with a half-written sum
    assert sums[other] == Sums(2, 3.0, 5.0)
    assert store.skipped.count == 1


async def flushed(measurements: Measurements, store: RedisMeasurements) -> None:
    failures = measurements.flush_failures
    await measurements.flush(store)
    assert measurements.flush_failures == failures, "the flush was expected to succeed"


async def redis_killed_mid_batch(redis: RedisServer, cut: Cut) -> tuple[Sums, int, int]:
    """35 values in three flushes; the second batch's exchange is cut (`request`: Redis never
    got it; `reply`: Redis applied it, durably, and its answer is lost) and Redis is killed
    and restarted from its append-only file there. (What Redis holds, the values sent,
    batches Redis recognised as already applied.)"""
    async with cut_proxy(redis.port) as proxy, connect(proxy.url) as client:
        store = RedisMeasurements(client, PREFIX)
        measurements = Measurements()
        record(measurements, range(10))
        await flushed(measurements, store)  # the script is loaded: the next write is one call
        record(measurements, range(10, 30))
        armed = proxy.arm(b"treatment|satisfaction", cut)
        await measurements.flush(store)
        assert armed.is_set()
        assert measurements.flush_failures == 1
        await redis.kill()
        await redis.start()  # with what its append-only file holds
        landed = (await stored(redis)).count
        assert landed == (30 if cut == "reply" else 10)
        record(measurements, range(30, 35))
        await flushed(measurements, store)  # the unconfirmed batch again, as it was
        await flushed(measurements, store)  # what was recorded meanwhile
        return await stored(redis), 35, store.duplicates


async def test_redis_killed_after_applying_a_batch_does_not_count_it_twice(
    durable_redis: RedisServer,
) -> None:
    """Redis applies the batch (and writes it to its append-only file), then dies before
    its answer reaches abgate: the flush keeps the batch and sends it again, with the same
    id, to the restarted Redis, which recognises it."""
    sums, _, duplicates = await redis_killed_mid_batch(durable_redis, "reply")
    assert sums == Sums(35, float(sum(range(35))), float(sum(v * v for v in range(35))))
    assert duplicates == 1


async def test_redis_killed_before_applying_a_batch_loses_nothing(
    durable_redis: RedisServer,
) -> None:
    sums, _, duplicates = await redis_killed_mid_batch(durable_redis, "request")
    assert sums.count == 35
    assert duplicates == 0
