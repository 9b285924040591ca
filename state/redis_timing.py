"""Every Redis command abgate sends, timed: `abgate_redis_command_seconds{command}`.

The client is redis-py's with two methods wrapped, so no call site can forget to time
itself: `execute_command` (single commands, Lua scripts) and a pipeline's `execute` (counted
as command "pipeline", whatever it holds). Pub/sub waits are not commands and are not
timed. Times are what abgate waited, event-loop scheduling included: what a slow Redis
costs the control plane and the flushes. One process-wide table (commands are few and
named by redis-py), read by the flag backend's collector."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import HistogramMetricFamily
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class CommandTimes:
    """Per command: counts per bucket (the last is +Inf) and the sum of seconds."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, command: str, seconds: float) -> None:
        counts = self.counts.get(command)
        if counts is None:
            counts = self.counts[command] = [0] * (len(BOUNDS) + 1)
            self.sums[command] = 0.0
        counts[bisect_left(BOUNDS, seconds)] += 1
        self.sums[command] += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "abgate_redis_command_seconds",
            "Redis commands this process sent, by command (a pipeline counts once).",
            labels=["command"],
        )
        for command, counts in sorted(self.counts.items()):
            buckets, running = [], 0
            for bound, count in zip((*BOUNDS, float("inf")), counts, strict=True):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
            family.add_metric([command], buckets, self.sums[command])
        yield family


REDIS_COMMANDS = CommandTimes()


class TimedPipeline(Pipeline):
    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        started = time.perf_counter()
        try:
            return await super().execute(raise_on_error)
        finally:
            REDIS_COMMANDS.observe("pipeline", time.perf_counter() - started)


class TimedRedis(Redis):
    async def execute_command(self, *args: Any, **options: Any) -> Any:
        started = time.perf_counter()
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        finally:
            name = args[0] if args else "?"
            command = name.decode() if isinstance(name, bytes) else str(name)
            REDIS_COMMANDS.observe(command.lower(), time.perf_counter() - started)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> TimedPipeline:
        return TimedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
