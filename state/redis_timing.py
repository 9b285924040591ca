"""Every Redis command abgate sends, timed: `abgate_redis_command_seconds{command}`.

The client is redis-py's with two methods wrapped, so no call site can forget to time
itself: `execute_command` (single commands, Lua scripts) and a pipeline's `execute` (counted
as command "pipeline", whatever it holds). Pub/sub waits are not commands and are not
timed. Times are what abgate waited, event-loop scheduling included: what a slow Redis
costs the control plane and the flushes. One process-wide table (commands are few and
named by redis-py), read by the flag backend's collector."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import HistogramMetricFamily
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from state.histogram import Histogram

BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class CommandTimes:
    """One histogram per command name."""

    def __init__(self) -> None:
        self.commands: dict[str, Histogram] = {}

    def observe(self, command: str, seconds: float) -> None:
        histogram = self.commands.get(command)
        if histogram is None:
            histogram = self.commands[command] = Histogram(BOUNDS)
        histogram.observe(seconds)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "abgate_redis_command_seconds",
            "Redis commands this process sent, by command (a pipeline counts once).",
            labels=["command"],
        )
        for command, histogram in sorted(self.commands.items()):
            family.add_metric([command], histogram.cumulative(), histogram.sum)
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
