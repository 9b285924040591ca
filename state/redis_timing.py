"""Redis timed two ways: what abgate waits for each command it sends, and what Redis itself
spends on the commands it executes.

`abgate_redis_command_seconds{command}` (client side): redis-py's client with two methods
wrapped, so no call site can forget to time itself: `execute_command` (single commands, Lua
scripts) and a pipeline's `execute` (counted as command "pipeline", whatever it holds).
Pub/sub waits are not commands and are not timed. Times are what abgate waited, the network
and its own event loop's scheduling included: what a slow Redis (or a busy process) costs
the control plane and the flushes. One process-wide table, read by the flag backend's
collector.

`abgate_redis_server_seconds{command}` (server side, `ServerTimes`): Redis' own execution
time, from `INFO commandstats` (calls and microseconds per command since Redis started),
polled every SERVER_POLL seconds by the process that writes flags. Each poll turns the
interval's change into observations: a command called n times in it, for u microseconds in
all, counts n observations of u/n. Its quantiles are over calls at the grain of (command,
interval): a call's own time within an interval is that interval's mean for its command.
This is what `redis_commands_duration_p95` reads (monitoring/alerts.yml): Redis' work, not
abgate's event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import HistogramMetricFamily
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from abgate.config import metrics_catalogue
from abgate.config.metrics_catalogue import REDIS_COMMAND_BUCKETS, REDIS_SERVER_BUCKETS
from abgate.state.histogram import Histogram

log = logging.getLogger("abgate.flags")
SERVER_POLL = 5.0  # seconds, as the demo's Prometheus scrapes


class CommandTimes:
    """One histogram per command name."""

    def __init__(self) -> None:
        self.commands: dict[str, Histogram] = {}

    def observe(self, command: str, seconds: float) -> None:
        histogram = self.commands.get(command)
        if histogram is None:
            histogram = self.commands[command] = Histogram(REDIS_COMMAND_BUCKETS)
        histogram.observe(seconds)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = metrics_catalogue.REDIS_COMMAND_SECONDS.new()
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


class ServerTimes:
    """Redis' own time per command, from INFO commandstats (see the module's docstring).
    The first poll counts everything since Redis started; a Redis that restarted (its
    counts went down) starts over the same way. Our own INFO is left out."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._seen: dict[str, tuple[int, int]] = {}  # command -> (calls, usec) last polled
        self.commands: dict[str, Histogram] = {}

    async def run(self) -> None:
        """Owned background task: poll until cancelled; Redis down is skipped (the flag
        store's own gauges say so)."""
        while True:
            try:
                await self.poll()
            except (RedisError, OSError) as exc:
                log.debug("INFO commandstats failed: %s", exc)
            await asyncio.sleep(SERVER_POLL)

    async def poll(self) -> None:
        stats = await self._client.info("commandstats")
        for name, value in stats.items():
            if not name.startswith("cmdstat_") or not isinstance(value, dict):
                continue
            command = name.removeprefix("cmdstat_")
            if command == "info":
                continue
            calls, usec = int(value.get("calls", 0)), int(value.get("usec", 0))
            last_calls, last_usec = self._seen.get(command, (0, 0))
            if calls < last_calls or usec < last_usec:  # Redis restarted: counts begin again
                last_calls, last_usec = 0, 0
            self._seen[command] = (calls, usec)
            if calls > last_calls:
                histogram = self.commands.get(command)
                if histogram is None:
                    histogram = self.commands[command] = Histogram(REDIS_SERVER_BUCKETS)
                times = calls - last_calls
                histogram.observe_many((usec - last_usec) / times / 1e6, times)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = metrics_catalogue.REDIS_SERVER_SECONDS.new()
        for command, histogram in sorted(self.commands.items()):
            family.add_metric([command], histogram.cumulative(), histogram.sum)
        yield family
