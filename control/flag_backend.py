"""Which flag store a process uses, and everything it owns: the embedded store (in `abgate
run`'s control process, served to its data plane over the live-state channel), or a Redis
client with its sync task (every process) and writer (processes with a control API)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

from prometheus_client.core import Metric
from redis.asyncio import Redis

from abgate.config import Config, metrics_catalogue
from abgate.state.flags import FlagStore, FlagTable, MemoryFlagStore, load_flags
from abgate.state.live_server import LiveStateServer, LocalFlagStore
from abgate.state.measurements import MeasurementStore, MemoryMeasurements
from abgate.state.redis_client import (
    RedisConnection,
    connect_redis,
    describe_redis_error,
    redis_settings,
)
from abgate.state.redis_flag_sync import LocalInstance, RedisFlagSync, new_instance_id
from abgate.state.redis_flags import RedisFlagStore, RedisKeys
from abgate.state.redis_measurements import RedisMeasurements
from abgate.state.redis_timing import REDIS_COMMANDS, ServerTimes
from abgate.state.state_file import StateFile
from abgate.state.tasks import stop_task


def snapshot_file(config: Config) -> StateFile | None:
    return StateFile(config.flags.state_file) if config.flags.state_file else None


def initial_table(config: Config) -> FlagTable:
    """Config defaults, then anything newer from the local snapshot (so a restart, or a start
    while Redis is down, routes with the last known percentages)."""
    table = FlagTable.from_config(config)
    snapshot = snapshot_file(config)
    if snapshot is not None:
        flags, _ = load_flags(snapshot)
        for flag in flags:
            if flag.name in table:
                table.apply(flag)
    return table


@dataclass
class FlagBackend:
    table: FlagTable
    store: FlagStore | None  # None in a data-plane-only process with Redis
    sync: RedisFlagSync | None
    measurements: MeasurementStore
    server_times: ServerTimes | None = None  # Redis' own time, where flags are written

    def collect(self) -> Iterator[Metric]:
        sync = self.sync
        connected = metrics_catalogue.FLAG_STORE_CONNECTED.new()
        connected.add_metric([], 1.0 if sync is None or sync.connected else 0.0)
        yield connected
        if sync is None:
            return
        yield from REDIS_COMMANDS.collect()
        if self.server_times is not None:
            yield from self.server_times.collect()
        age = metrics_catalogue.FLAG_STATE_AGE.new()
        age.add_metric([], min(sync.state_age, 1e9))
        yield age
        for declared, value in (
            (metrics_catalogue.FLAG_STORE_RECONNECTS, sync.reconnects),
            (metrics_catalogue.FLAG_RESYNCS, sync.resyncs),
            (
                metrics_catalogue.FLAG_RESEEDS,
                self.store.reseeded if isinstance(self.store, RedisFlagStore) else 0,
            ),
            (
                metrics_catalogue.FLAG_WRITES_UNREPLICATED,
                self.store.unreplicated if isinstance(self.store, RedisFlagStore) else 0,
            ),
        ):
            family = declared.new()
            family.add_metric([], value)
            yield family


@dataclass(frozen=True, slots=True)
class SharedState:
    """What a process reads and writes flag and measurement state through, opened before the
    data plane so it closes after it (the plane's last measurement flush still needs it)."""

    client: Redis | None  # None: the embedded store
    snapshot: StateFile | None
    measurements: MeasurementStore
    redis: RedisConnection | None = None  # how `client` was made (errors, WAIT settings)


def open_shared_state(
    stack: AsyncExitStack, config: Config, *, state_file: bool = True
) -> SharedState:
    """`state_file=False`: another process of this `abgate run` owns the state file (its
    control process); this one neither reads measurements from it nor writes it."""
    snapshot = snapshot_file(config) if state_file else None
    settings = redis_settings(config)
    if settings is None:
        measurements = MemoryMeasurements(snapshot)
        stack.callback(measurements.save)  # the last save, after the task below stops
        if snapshot is not None:
            saves = asyncio.create_task(
                measurements.save_every_while(), name="abgate-measurement-saves"
            )
            stack.push_async_callback(stop_task, saves)
        return SharedState(None, snapshot, measurements)
    redis = connect_redis(settings)
    stack.push_async_callback(redis.aclose)
    client = redis.client
    return SharedState(client, snapshot, RedisMeasurements(client, config.flags.key_prefix), redis)


async def start_flag_backend(
    stack: AsyncExitStack,
    config: Config,
    table: FlagTable,
    *,
    writer: bool,
    proxy_address: str | None,
    shared: SharedState,
    status: Callable[[], dict[str, str]] | None = None,
    live: LiveStateServer | None = None,
) -> FlagBackend:
    """Start what the flag state needs; `stack` tears it down. `proxy_address` registers this
    process as a proxy instance (with Redis). Without Redis the store is the embedded one,
    and `live` the channel that serves it to the data plane."""
    client, snapshot = shared.client, shared.snapshot
    started = time.time()
    if client is None:
        memory = MemoryFlagStore(table, snapshot)
        memory.restore()
        store: FlagStore = memory if live is None else LocalFlagStore(memory, live)
        return FlagBackend(table, store, None, shared.measurements)
    keys = RedisKeys(config.flags.key_prefix)
    heartbeat = config.flags.heartbeat_interval
    redis = shared.redis
    redis_store = (
        RedisFlagStore(
            client,
            keys,
            table,
            heartbeat_interval=heartbeat,
            durable=snapshot,
            wait_replicas=redis.settings.wait_replicas if redis else 0,
            wait_timeout=redis.settings.wait_timeout if redis else 0.5,
        )
        if writer
        else None
    )
    instance = (
        LocalInstance(new_instance_id(), proxy_address, started)
        if proxy_address is not None
        else None
    )
    sync = await stack.enter_async_context(
        RedisFlagSync(
            client,
            keys,
            table,
            heartbeat_interval=heartbeat,
            instance=instance,
            snapshot=None if writer else snapshot,
            on_connect=redis_store.reseed if redis_store is not None else None,
            status=status,
            describe=redis.describe if redis else describe_redis_error,
        )
    )
    server_times = None
    if writer:  # one process per deployment polls Redis for its own times
        server_times = ServerTimes(client)
        task = asyncio.create_task(server_times.run(), name="abgate-redis-server-times")
        stack.push_async_callback(stop_task, task)
    return FlagBackend(table, redis_store, sync, shared.measurements, server_times)
