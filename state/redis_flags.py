"""Flags in Redis, pushed to every sidecar's memory by pub/sub.

    {prefix}:flags               hash   flag name -> flag JSON (the current state)
    {prefix}:history:NAME        stream one entry per change (the audit trail)
    {prefix}:changes             channel every write publishes the new flag JSON here
    {prefix}:instance:ID         hash   a proxy's id, address, applied versions (expires)
    {prefix}:instances           zset   instance id -> last heartbeat

(`{prefix}` is a Redis Cluster hash tag: every key lands in one slot, so the scripts stay
atomic there too.) Writes are Lua scripts: version bump, history and publish happen in one
atomic step, so concurrent writers can neither lose an update nor publish versions out of
order. Readers apply messages through `FlagTable.apply`, which ignores older versions, and
re-read the whole hash after every (re)connect, so a message missed while disconnected is
never lost. Redis down: readers keep the state they have, retry with backoff, and say so once.
Redis up but refusing writes (maxmemory reached, a read-only replica): not an outage; the
subscription stays, heartbeats and the re-seed are retried at the heartbeat's pace, said once.

Redis restarted empty: the control plane's writer re-seeds on every (re)connect what Redis
lacks: the flags (its copy wins only where newer), each flag's current measurement phase,
and the flag audit trail (its durable copy of the recent changes, when the stream is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from abgate.state.errors import store_errors
from abgate.state.flags import (
    Flag,
    FlagTable,
    Instance,
    VersionConflict,
    flag_from_json,
    flag_to_json,
    load_flags,
    save_flags_copy,
)
from abgate.state.measurements import phases_key
from abgate.state.redis_client import describe_redis_error, is_config_mistake
from abgate.state.state_file import StateFile

log = logging.getLogger("abgate.flags")
HISTORY_MAXLEN = 10_000
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0

_SET = """
-- ARGV: now, by, reason, channel, history maxlen, then per flag: name, basis points,
-- the version the writer would give it, its held basis points and phase, and the version it
-- expects (0: any). Compare first, write after: a conflict writes nothing.
local per = 6
local count = (#ARGV - 5) / per
for i = 0, count - 1 do
  local base = 6 + i * per
  local expected = tonumber(ARGV[base + 5])
  if expected > 0 then
    local current = redis.call('HGET', KEYS[1], ARGV[base])
    -- Not in Redis yet: the writer's own copy is what it compared with.
    local held = current and cjson.decode(current)['version'] or tonumber(ARGV[base + 2]) - 1
    if held ~= expected then return {'conflict', ARGV[base], current or ''} end
  end
end
local out = {}
for i = 0, count - 1 do
  local base = 6 + i * per
  local name = ARGV[base]
  local basis_points = tonumber(ARGV[base + 1])
  local version = tonumber(ARGV[base + 2])
  -- What the writer holds, for a Redis that does not have the flag (yet).
  local held_bp, held_phase = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local current = redis.call('HGET', KEYS[1], name)
  if current then
    local held = cjson.decode(current)
    local next_version = held['version'] + 1
    if next_version > version then version = next_version end
    held_bp, held_phase = held['basis_points'], held['phase'] or held['version']
  end
  -- A new phase only when the percentage changes.
  local phase = version
  if held_bp == basis_points then phase = held_phase end
  local flag = cjson.encode({name = name, basis_points = basis_points,
    version = version, updated_at = tonumber(ARGV[1]), updated_by = ARGV[2],
    reason = ARGV[3], phase = phase})
  redis.call('HSET', KEYS[1], name, flag)
  redis.call('XADD', KEYS[2 + i], 'MAXLEN', '~', ARGV[5], '*', 'flag', flag)
  out[#out + 1] = flag
end
for i = 1, #out do redis.call('PUBLISH', ARGV[4], out[i]) end
return out
"""

_SEED = """
-- KEYS[1]: the flags hash; KEYS[1 + i]: flag i's measurement phases hash. ARGV[1]: channel;
-- then per flag: its JSON, its phase id and that phase's "basis_points|started_at".
local seeded = 0
for i = 1, (#ARGV - 1) / 3 do
  local raw = ARGV[3 * i - 1]
  local flag = cjson.decode(raw)
  local current = redis.call('HGET', KEYS[1], flag['name'])
  if (not current) or cjson.decode(current)['version'] < flag['version'] then
    redis.call('HSET', KEYS[1], flag['name'], raw)
    redis.call('PUBLISH', ARGV[1], raw)
    seeded = seeded + 1
  end
  -- A phase Redis lost (restarted empty): the statistics would have no current phase.
  redis.call('HSETNX', KEYS[1 + i], ARGV[3 * i], ARGV[3 * i + 1])
end
return seeded
"""

_SEED_AUDIT = """
-- KEYS[1]: a flag's audit stream; ARGV[1]: max length, then its entries oldest first. Only
-- into a stream Redis lost: one it has is the truth.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #ARGV do redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'flag', ARGV[i]) end
return #ARGV - 1
"""
AUDIT_COPY = 200  # recent changes per flag kept in the durable copy, for a re-seed


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str

    @property
    def flags(self) -> str:
        return f"{{{self.prefix}}}:flags"

    @property
    def channel(self) -> str:
        return f"{{{self.prefix}}}:changes"

    @property
    def instances(self) -> str:
        return f"{{{self.prefix}}}:instances"

    def history(self, name: str) -> str:
        return f"{{{self.prefix}}}:history:{name}"

    def instance(self, instance_id: str) -> str:
        return f"{{{self.prefix}}}:instance:{instance_id}"


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


def _audit_entry(entry: dict[str, Any]) -> str | None:
    """An audit entry as the stream holds it (None: unreadable, left out)."""
    try:
        return orjson.dumps(flag_to_json(flag_from_json(entry))).decode()
    except (KeyError, TypeError, ValueError):
        return None


class RedisFlagStore:
    """The control plane's writer. Its own table is kept in step by a RedisFlagSync."""

    def __init__(
        self,
        client: Redis,
        keys: RedisKeys,
        table: FlagTable,
        *,
        heartbeat_interval: float,
        durable: StateFile | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 0.5,
    ) -> None:
        self._client = client
        self._keys = keys
        self.table = table
        self._heartbeat = heartbeat_interval
        self._durable = durable
        self._set = client.register_script(_SET)
        self._seed = client.register_script(_SEED)
        self._seed_audit = client.register_script(_SEED_AUDIT)
        self.reseeded = 0
        # The recent changes of each flag this process saw (its writes and others', as the
        # table applies them), oldest first: the audit trail a re-seed puts back.
        self._audit: dict[str, deque[dict[str, Any]]] = {}
        if durable is not None:
            _, history = load_flags(durable)
            for name, entries in history.items():
                self._audit[name] = deque(entries[-AUDIT_COPY:], AUDIT_COPY)
        table.subscribe(self._audited)
        # A write answers once this many replicas hold it (WAIT on the write's connection):
        # the replica Sentinel promotes then has it. Short of them after wait_timeout, the
        # write stands (every sidecar has it) and is counted: a failover may lose it, and the
        # re-seed from this process's copy (`reseed`) puts it back.
        self._wait_replicas = wait_replicas
        self._wait_ms = max(1, round(wait_timeout * 1000))
        self.unreplicated = 0
        self._short = False  # the last write was short of replicas

    def _audited(self, flag: Flag) -> None:
        entries = self._audit.setdefault(flag.name, deque(maxlen=AUDIT_COPY))
        if not entries or entries[-1].get("version", 0) < flag.version:
            entries.append({**flag.as_json(), "basis_points": flag.basis_points})

    async def set_percentages(
        self,
        changes: Mapping[str, int],
        *,
        by: str,
        reason: str,
        expected: Mapping[str, int] | None = None,
    ) -> list[Flag]:
        names = list(changes)
        args: list[str | int | float] = [
            time.time(),
            by,
            reason,
            self._keys.channel,
            HISTORY_MAXLEN,
        ]
        for name in names:
            held = self.table.get(name)
            args += [
                name,
                changes[name],
                held.version + 1,
                held.basis_points,
                held.phase,
                (expected or {}).get(name, 0),
            ]
        keys = [self._keys.flags, *map(self._keys.history, names)]
        with store_errors():
            if self._wait_replicas:
                raw = await self._set_replicated(keys, args, names)
            else:
                raw = await self._set(keys=keys, args=args)
        if raw and raw[0] == "conflict":
            _, name, current = raw
            held = flag_from_json(orjson.loads(current)) if current else self.table.get(name)
            raise VersionConflict(held, (expected or {})[name])
        flags = [flag_from_json(orjson.loads(item)) for item in raw]
        for flag in flags:
            self.table.apply(flag)
        await self._save_durable()
        return flags

    async def _set_replicated(
        self, keys: list[str], args: list[str | int | float], names: list[str]
    ) -> Any:
        """The write, then WAIT in the same pipeline: one connection, so WAIT counts the
        replicas that have this write. `async with`: a pipeline that fails while loading its
        script (a failover) holds its connection until reset."""
        async with self._client.pipeline(transaction=False) as pipe:
            await self._set(keys=keys, args=args, client=pipe)
            pipe.wait(self._wait_replicas, self._wait_ms)
            raw, acknowledged = await pipe.execute()
        if raw and raw[0] == "conflict":
            return raw
        short = int(acknowledged) < self._wait_replicas
        if short:
            self.unreplicated += 1
        if short != self._short:  # said once when it starts, once when it ends
            self._short = short
            if short:
                log.warning(
                    "flag store: write of %s confirmed by %d of %d replica(s) within %d ms; "
                    "it stands, and this process re-seeds it if a failover loses it "
                    "(counted in abgate_flag_writes_unreplicated_total from now on)",
                    ", ".join(names),
                    int(acknowledged),
                    self._wait_replicas,
                    self._wait_ms,
                )
            else:
                log.warning("flag store: replicas confirm flag writes again")
        return raw

    async def reseed(self) -> None:
        """Put back what Redis lacks (it restarted empty, or lost writes): our copy wins only
        where it is newer, so live percentages are never reset to older values; with each
        flag its current phase, and the audit trail of a flag whose stream is gone."""
        flags = self.table.all()
        if not flags:
            return
        args: list[str] = [self._keys.channel]
        for flag in flags:
            started = f"{flag.basis_points}|{flag.updated_at}"
            args += [orjson.dumps(flag_to_json(flag)).decode(), str(flag.phase), started]
        phases = [phases_key(self._keys.prefix, flag.name) for flag in flags]
        seeded = int(await self._seed(keys=[self._keys.flags, *phases], args=args))
        audit = 0
        for name, entries in self._audit.items():
            raw = [entry for entry in map(_audit_entry, entries) if entry is not None]
            if raw and name in self.table:
                audit += int(
                    await self._seed_audit(
                        keys=[self._keys.history(name)], args=[HISTORY_MAXLEN, *raw]
                    )
                )
        if seeded or audit:
            self.reseeded += seeded
            log.warning(
                "flag store: re-seeded %d flag(s) and %d audit entries into Redis from the "
                "control plane's copy",
                seeded,
                audit,
            )
        await self._save_durable()

    async def _save_durable(self) -> None:
        if self._durable is not None:
            history = {name: list(entries) for name, entries in self._audit.items()}
            await asyncio.to_thread(save_flags_copy, self._durable, self.table.all(), history)

    async def history(self, name: str, limit: int) -> list[dict[str, object]]:
        with store_errors():
            entries = await self._client.xrevrange(self._keys.history(name), count=limit)
        out = []
        for entry_id, fields in entries or []:
            flag = flag_from_json(orjson.loads((fields or {})["flag"]))
            out.append({**flag.as_json(), "id": entry_id})
        return out

    async def instances(self) -> list[Instance]:
        now = time.time()
        live_since = now - max(3.0, self._heartbeat * 5)
        with store_errors():
            await self._client.zremrangebyscore(self._keys.instances, "-inf", live_since)
            ids = await self._client.zrangebyscore(self._keys.instances, live_since, "+inf")
            pipe = self._client.pipeline(transaction=False)
            for instance_id in ids:
                pipe.hgetall(self._keys.instance(str(instance_id)))
            records = await pipe.execute()
        return [
            Instance(
                id=r["id"],
                address=r["address"],
                pid=int(r["pid"]),
                started_at=float(r["started_at"]),
                heartbeat_at=float(r["heartbeat_at"]),
                applied={k: int(v) for k, v in orjson.loads(r["applied"]).items()},
                breakers=orjson.loads(r.get("breakers") or "{}"),
            )
            for r in records
            if r
        ]
