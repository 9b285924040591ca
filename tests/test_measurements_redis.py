"""Measurements in Redis as the statistics read them: in bounded pieces, the same sums as a
flush wrote, with hiredis parsing the replies; and what Redis itself spends on each command."""

from __future__ import annotations

from pathlib import Path

import redis.utils

from abgate.state.measurements import (
    CLUSTERS,
    READ_PIECE,
    UNCLUSTERED,
    MemoryMeasurements,
    Phase,
    Sums,
)
from abgate.state.redis_client import connect
from abgate.state.redis_measurements import RedisMeasurements
from abgate.state.redis_timing import REDIS_COMMANDS, ServerTimes
from tests.redis_server import redis_server


async def test_an_experiment_is_read_in_pieces_and_whole(tmp_path: Path) -> None:
    assert redis.utils.HIREDIS_AVAILABLE  # the C parser, not redis-py's pure Python one
    batch = {
        ("exp", phase, arm, metric, cluster): Sums(cluster + 2, cluster * 0.5, cluster * 0.25)
        for phase in (1, 4, 9)
        for arm in ("control", "treatment")
        for metric in ("error", "latency", "accuracy")
        for cluster in (*range(CLUSTERS), UNCLUSTERED)
    }
    fields = 3 * len(batch)
    assert fields > 5 * READ_PIECE
    memory = MemoryMeasurements()
    async with redis_server(tmp_path) as server:
        client = connect(server.url)
        try:
            store = RedisMeasurements(client, "abgate")
            for phase in (1, 4, 9):
                await store.start_phase("exp", Phase(phase, 2500, 1.0))
                await memory.start_phase("exp", Phase(phase, 2500, 1.0))
            await store.add(batch)
            await memory.add(batch)
            scans = REDIS_COMMANDS.commands.get("hscan")
            before = sum(scans.counts) if scans is not None else 0
            phases, sums = await store.read("exp")
        finally:
            await client.aclose()
    assert (phases, sums) == await memory.read("exp")
    hscan = REDIS_COMMANDS.commands["hscan"]
    assert sum(hscan.counts) - before >= fields // READ_PIECE  # one bounded reply at a time


async def test_redis_own_time_per_command_from_its_commandstats(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as server:
        client = connect(server.url)
        try:
            times = ServerTimes(client)
            for index in range(30):
                await client.hset("h", f"f{index}", index)
            await times.poll()  # the first: everything since Redis started
            assert sum(times.commands["hset"].counts) == 30
            assert "info" not in times.commands  # our own polling is left out
            for _ in range(5):
                await client.hgetall("h")
            await times.poll()
            hset, hgetall = times.commands["hset"], times.commands["hgetall"]
            assert (sum(hset.counts), sum(hgetall.counts)) == (30, 5)  # only what is new
            assert 0 < hgetall.sum < 0.5  # seconds: microseconds each
            assert "abgate_redis_server_seconds" in {f.name for f in times.collect()}
            await client.config_resetstat()  # as after a restart: counts start again
            await client.hset("h", "again", 1)
            await times.poll()
            assert sum(times.commands["hset"].counts) == 31
        finally:
            await client.aclose()
