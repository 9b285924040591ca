"""The sidecar's side of the Redis flags (state/redis_flags.py has the keys and the writer):
one owned task keeps a FlagTable in step with Redis by pub/sub, re-reads the whole hash after
every (re)connect so a message missed while away is never lost, registers this process and
beats its heartbeat, and says once when Redis is away or refuses writes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from abgate.state.flags import (
    FlagTable,
    flag_from_json,
    save_flags_copy,
)
from abgate.state.redis_client import describe_redis_error, is_config_mistake
from abgate.state.redis_flags import BACKOFF_FIRST, BACKOFF_MAX, RedisKeys
from abgate.state.state_file import StateFile

log = logging.getLogger("abgate.flags")


def new_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


@dataclass(frozen=True, slots=True)
class LocalInstance:
    """This process, as it registers itself."""

    id: str
    address: str
    started_at: float


class _ConnectSignal:
    __slots__ = ("__weakref__", "fired")

    def __init__(self) -> None:
        self.fired = False

    def on_connect(self, _connection: object) -> None:
        self.fired = True


class RedisFlagSync:
    """Keeps a FlagTable in step with Redis from one owned background task."""

    def __init__(
        self,
        client: Redis,
        keys: RedisKeys,
        table: FlagTable,
        *,
        heartbeat_interval: float,
        instance: LocalInstance | None = None,
        snapshot: StateFile | None = None,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        status: Callable[[], dict[str, str]] | None = None,
        describe: Callable[[BaseException], str] = describe_redis_error,
    ) -> None:
        self._client = client
        self._keys = keys
        self.table = table
        self._heartbeat = heartbeat_interval
        self._describe = describe  # errors in words (a refused password, a certificate)
        self.last_error: str | None = None  # why Redis is away, while it is
        self._instance = instance
        self._snapshot = snapshot
        self._on_connect = on_connect
        self._status = status  # more to report in each heartbeat (breaker states)
        self._task: asyncio.Task[None] | None = None
        self._dirty = False
        self._in_outage = False
        self._stopping = False
        self._reseed_due = False  # the writer's re-seed is still owed (Redis refused it)
        self.refusing: str | None = None  # why Redis refuses writes, while it does
        self.connected = False
        self.synced_at = 0.0  # unix time of the last contact with Redis
        self.reconnects = 0
        self.resyncs = 0
        self.write_refusals = 0  # heartbeats or re-seeds Redis refused (maxmemory, read-only)
        self.connected_event = asyncio.Event()

    async def __aenter__(self) -> RedisFlagSync:
        self._task = asyncio.create_task(self._run(), name="abgate-flag-sync")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            # The loop checks `_stopping` after every read: redis-py can swallow a cancel that
            # lands inside its read-with-timeout, so cancelling alone is not enough.
            self._stopping = True
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=5.0)
            if not done:
                log.error("flag store: sync task did not stop within 5s; abandoning it")
        if self._instance is not None and self.connected:
            try:  # leave the registry at once rather than by expiry
                await self._client.zrem(self._keys.instances, self._instance.id)
                await self._client.delete(self._keys.instance(self._instance.id))
            except (RedisError, OSError):
                pass

    @property
    def state_age(self) -> float:
        return time.time() - self.synced_at if self.synced_at else float("inf")

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping:
            try:
                await self._session()
            except (RedisError, OSError) as exc:
                if self.connected:  # a working connection was lost: a new outage begins
                    self.reconnects += 1
                    backoff = BACKOFF_FIRST
                # Say it once per outage and cause, not once per retry.
                error = self._describe(exc)
                if not self._in_outage or error != self.last_error:
                    log.log(
                        logging.ERROR if is_config_mistake(exc) else logging.WARNING,
                        "flag store: %s; routing with the last state, retrying",
                        error,
                    )
                    self._in_outage = True
                    self.last_error = error
                self.connected = False
                self.connected_event.clear()
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        pubsub = self._client.pubsub()
        reconnected = _ConnectSignal()  # held here: redis-py keeps only a weak reference
        try:
            await pubsub.subscribe(self._keys.channel)
            # redis-py's PubSub reconnects and resubscribes on its own when it finds its
            # connection closed; this callback (run after the resubscribe) makes such a
            # reconnect re-read the state too, or a message missed meanwhile would stay missed.
            connection: Any = pubsub.connection  # set by subscribe()
            connection.register_connect_callback(reconnected.on_connect)
            await self._connected()
            next_beat = loop.time() + self._heartbeat
            while True:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=max(0.0, next_beat - loop.time())
                )
                if self._stopping:
                    return
                if reconnected.fired:
                    reconnected.fired = False
                    self.reconnects += 1
                    await self._connected()
                    continue
                if (
                    message is not None
                    and message.get("type") == "message"
                    and self._apply(message["data"])
                ):
                    await self._writes(self._beat)  # the new version at once (rollback waits)
                    continue
                if loop.time() >= next_beat:
                    await self._writes(self._beat)
                    next_beat = loop.time() + self._heartbeat
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _connected(self) -> None:
        """Subscribed (again): re-read everything, let the writer re-seed, report in."""
        await self._resync()  # after subscribing: nothing can fall between the two
        self._reseed_due = self._on_connect is not None
        await self._writes(self._reseed)
        self.connected = True
        self.connected_event.set()
        if self._in_outage:
            self._in_outage = False
            self.last_error = None
            log.warning("flag store: Redis is reachable again; state re-read")
        await self._writes(self._beat)

    async def _reseed(self) -> None:
        if self._reseed_due and self._on_connect is not None:
            await self._on_connect()
            self._reseed_due = False

    async def _writes(self, write: Callable[[], Awaitable[None]]) -> None:
        """A write of the session's (heartbeat, re-seed). Redis answering with an error
        (maxmemory reached, a read-only replica) is not an outage: reconnecting and
        re-reading everything would not help (it once made 138 reconnects in 10 s, two
        warnings each); the subscription stays, the write is tried again at the next
        heartbeat, and it is said once until Redis takes writes again."""
        try:
            if self._reseed_due and write is not self._reseed:
                await self._reseed()
            await write()
        except ResponseError as exc:
            self.write_refusals += 1
            cause = str(exc).split("\n", 1)[0][:200]
            if self.refusing is None:
                log.warning(
                    "flag store: Redis refuses writes (%s); routing goes on, heartbeats%s "
                    "are retried every %gs",
                    cause,
                    " and the re-seed" if self._reseed_due else "",
                    self._heartbeat,
                )
            self.refusing = cause
            return
        if self.refusing is not None and not self._reseed_due:
            log.warning("flag store: Redis takes writes again")
            self.refusing = None

    async def _resync(self) -> None:
        stored = await self._client.hgetall(self._keys.flags)
        applied = sum(self._apply(str(raw)) for raw in stored.values())
        self.resyncs += 1
        self.synced_at = time.time()
        if applied:
            log.info("flag store: %d flag(s) updated from Redis", applied)

    def _apply(self, raw: str | bytes) -> bool:
        try:
            flag = flag_from_json(orjson.loads(raw))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.error("flag store: ignoring malformed flag %r: %s", raw[:200], exc)
            return False
        self.synced_at = time.time()
        if flag.name not in self.table or not self.table.apply(flag):
            return False
        self._dirty = True
        return True

    async def _beat(self) -> None:
        now = time.time()
        if self._instance is not None:
            instance = self._instance
            key = self._keys.instance(instance.id)
            pipe = self._client.pipeline(transaction=False)
            pipe.hset(
                key,
                mapping={
                    "id": instance.id,
                    "address": instance.address,
                    "pid": os.getpid(),
                    "started_at": instance.started_at,
                    "heartbeat_at": now,
                    "applied": orjson.dumps(self.table.versions()).decode(),
                    "breakers": orjson.dumps(self._status() if self._status else {}).decode(),
                },
            )
            pipe.expire(key, max(3, int(self._heartbeat * 5)))
            pipe.zadd(self._keys.instances, {instance.id: now})
            await pipe.execute()
        self.synced_at = now
        if self._dirty and self._snapshot is not None:
            self._dirty = False
            await asyncio.to_thread(save_flags_copy, self._snapshot, self.table.all())
