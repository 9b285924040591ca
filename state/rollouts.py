"""Rollout state and history, beside the flags: in the embedded state file, or in Redis.

A rollout's stage, its clock, approvals and the flag version it expects live here, so a
restarted controller resumes the same stage with the same clock. Every write is a
compare-and-set on `generation`; in Redis it is also fenced by the controller lease, so a
controller that lost its lease (paused, partitioned) cannot write over its successor.

Redis may lose everything (restarted empty): the Redis store remembers the newest copy of
each rollout it has read or written, keeps a durable copy in the state file (rollouts and
their recent history, read back at start), and `restore` puts back what Redis lacks (never
over what it has), so a rollout is never silently ended by a Redis restart.

    {prefix}:rollouts                hash    experiment -> rollout JSON
    {prefix}:rollout-history:NAME    list    decisions, newest first (capped)
    {prefix}:controller-lease        string  holder id (expires)
    {prefix}:controller-generation   counter fencing generation, +1 per new holder
    {prefix}:rollouts-alive          string  set once: missing again means Redis lost it all
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

import orjson
from redis.asyncio import Redis

from abgate.config.errors import AbgateError
from abgate.state.errors import StoreUnavailable, store_errors
from abgate.state.state_file import StateFile

RolloutStatus = Literal[
    "pending",
    "running",
    "awaiting_approval",
    "paused",
    "escalated",
    "rolled_back",
    "completed",
    "aborted",
]
ACTIVE: frozenset[str] = frozenset({"running", "awaiting_approval", "escalated"})
FINISHED: frozenset[str] = frozenset({"rolled_back", "completed", "aborted"})
HISTORY_LIMIT = 10_000  # per rollout, here; the history store (PostgreSQL) keeps them all
DURABLE_HISTORY = 200  # per rollout, in the state file beside Redis: what a re-seed puts back
log = logging.getLogger("abgate.rollout")


@dataclass(frozen=True, slots=True)
class Rollout:
    experiment: str
    state: RolloutStatus
    stage_index: int
    stage_started_at: float
    flag_version: int  # the flag version the controller expects: another one is a human
    started_at: float
    started_by: str
    plan: dict[str, Any] | None = None  # an override given at start; None: the config's
    approvals: tuple[int, ...] = ()  # stage indexes a person approved
    generation: int = 0  # +1 per write (compare-and-set)
    decision: str = ""
    reason: str = ""
    eta_seconds: float | None = None
    incident: str | None = None
    load_tests: tuple[int, ...] = ()  # stage indexes whose load test passed
    updated_at: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["approvals"] = list(self.approvals)
        data["load_tests"] = list(self.load_tests)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rollout:
        return cls(
            **{
                **data,
                "approvals": tuple(data.get("approvals") or ()),
                "load_tests": tuple(data.get("load_tests") or ()),
            }
        )

    def next(self, **changes: Any) -> Rollout:
        if changes.get("state", self.state) != "running":
            # Paused, escalated, awaiting approval or ended: it waits on a person, or on
            # nothing; an eta kept from the last tick would promise a time (trial).
            changes["eta_seconds"] = None
        return replace(self, generation=self.generation + 1, updated_at=time.time(), **changes)


class RolloutConflict(AbgateError):
    """Another writer changed the rollout first (or this controller lost its lease)."""


class RolloutStore(Protocol):
    async def get(self, experiment: str) -> Rollout | None: ...

    async def all(self) -> list[Rollout]: ...

    async def put(self, rollout: Rollout, expected_generation: int | None) -> None:
        """Write `rollout` if the stored one is at `expected_generation` (None: must not
        exist yet); else RolloutConflict."""
        ...

    async def append(self, experiment: str, event: dict[str, Any]) -> None: ...

    async def history(self, experiment: str, limit: int) -> list[dict[str, Any]]:
        """Newest first."""
        ...

    def lost(self, present: list[Rollout]) -> list[Rollout]:
        """This process's copies of rollouts the store lacks, given those it has."""
        ...

    async def restore(self, rollout: Rollout, event: dict[str, Any]) -> bool:
        """Put `rollout` (and the history this process keeps of it) back if the store has no
        rollout of that experiment, with `event` (why) on its history in the same write, so
        that nobody reads the one without the other; True if it did. Never writes over what
        the store has, so it needs no lease."""
        ...

    async def emptied(self) -> bool:
        """True (once) when the store has lost everything since it was last asked: Redis
        restarted empty. A fresh store counts as emptied the first time."""
        ...


class MemoryRollouts:
    """The embedded default: one process; kept in the state file's `rollouts` section."""

    def __init__(self, state: StateFile | None = None) -> None:
        self._file = state
        self._rollouts: dict[str, Rollout] = {}
        self._history: dict[str, list[dict[str, Any]]] = {}
        if state is not None:
            section = state.section("rollouts") or {}
            try:
                self._rollouts = {
                    name: Rollout.from_json(item)
                    for name, item in (section.get("current") or {}).items()
                }
                self._history = {
                    name: list(items) for name, items in (section.get("history") or {}).items()
                }
            except (TypeError, ValueError, AttributeError):
                self._rollouts, self._history = {}, {}

    async def get(self, experiment: str) -> Rollout | None:
        return self._rollouts.get(experiment)

    async def all(self) -> list[Rollout]:
        return list(self._rollouts.values())

    async def put(self, rollout: Rollout, expected_generation: int | None) -> None:
        held = self._rollouts.get(rollout.experiment)
        if (held.generation if held is not None else None) != expected_generation:
            raise RolloutConflict(f"{rollout.experiment} changed meanwhile")
        rollouts = {**self._rollouts, rollout.experiment: rollout}
        self._save(rollouts, self._history)
        self._rollouts = rollouts

    async def append(self, experiment: str, event: dict[str, Any]) -> None:
        history = dict(self._history)
        history[experiment] = [*history.get(experiment, []), event][-HISTORY_LIMIT:]
        self._save(self._rollouts, history)
        self._history = history

    async def history(self, experiment: str, limit: int) -> list[dict[str, Any]]:
        return list(reversed(self._history.get(experiment, [])[-limit:]))

    def lost(self, present: list[Rollout]) -> list[Rollout]:
        return []  # this process's memory is the store: nothing can go missing

    async def restore(self, rollout: Rollout, event: dict[str, Any]) -> bool:
        if rollout.experiment in self._rollouts:
            return False
        history = dict(self._history)
        history[rollout.experiment] = [*history.get(rollout.experiment, []), event][-HISTORY_LIMIT:]
        rollouts = {**self._rollouts, rollout.experiment: rollout}
        self._save(rollouts, history)
        self._rollouts, self._history = rollouts, history
        return True

    async def emptied(self) -> bool:
        return False

    def _save(self, rollouts: dict[str, Rollout], history: dict[str, list[dict[str, Any]]]) -> None:
        if self._file is None:
            return
        with store_errors():
            self._file.save_section(
                rollouts={
                    "current": {name: r.as_json() for name, r in rollouts.items()},
                    "history": history,
                }
            )


_PUT = """
-- KEYS: rollouts hash, lease; ARGV: name, rollout JSON, expected generation (-1: new),
-- lease holder ('' : no lease)
if ARGV[4] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[4] then return 'fenced' end
local current = redis.call('HGET', KEYS[1], ARGV[1])
local expected = tonumber(ARGV[3])
if current then
  if cjson.decode(current)['generation'] ~= expected then return 'conflict' end
elseif expected ~= -1 then return 'conflict' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 'ok'
"""


_RESTORE = """
-- KEYS: rollouts hash, the rollout's history list. ARGV: name, rollout JSON, the event that
-- says why, the history's limit, then its history entries newest first. Puts back only what
-- is missing: a rollout Redis has, or a history it has, is left as it is. Returns 1 when the
-- rollout was put back (and its event pushed with it).
local restored = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if #ARGV > 4 and redis.call('EXISTS', KEYS[2]) == 0 then
  for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
end
if restored == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[3])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
end
return restored
"""


class RedisRollouts:
    def __init__(
        self,
        client: Redis,
        prefix: str,
        lease: Lease | None = None,
        durable: StateFile | None = None,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._hash = f"{{{prefix}}}:rollouts"
        self._alive = f"{{{prefix}}}:rollouts-alive"
        self.lease = lease
        self._put = client.register_script(_PUT)
        self._restore = client.register_script(_RESTORE)
        self._durable = durable
        self._durable_failure: str | None = None
        # The newest copy of every rollout seen, and its recent history (newest first): what
        # a re-seed puts back. Started from the durable copy, so a restarted process has it.
        self._known: dict[str, Rollout] = {}
        self._recent: dict[str, deque[dict[str, Any]]] = {}
        self.restored = 0
        if durable is not None:
            self._load(durable)

    def _load(self, durable: StateFile) -> None:
        section = durable.section("rollouts") or {}
        try:
            for name, item in (section.get("current") or {}).items():
                self._known[name] = Rollout.from_json(item)
            for name, items in (section.get("history") or {}).items():
                # Saved oldest first (as the embedded store keeps it).
                self._recent[name] = deque(reversed(items[-DURABLE_HISTORY:]), DURABLE_HISTORY)
        except (TypeError, ValueError, AttributeError) as exc:
            log.error("ignoring the unreadable durable copy of the rollouts: %s", exc)
            self._known, self._recent = {}, {}

    def _history_key(self, experiment: str) -> str:
        return f"{{{self._prefix}}}:rollout-history:{experiment}"

    def _seen(self, rollout: Rollout) -> Rollout:
        held = self._known.get(rollout.experiment)
        if held is None or held.generation <= rollout.generation:
            self._known[rollout.experiment] = rollout
        return rollout

    async def get(self, experiment: str) -> Rollout | None:
        with store_errors():
            raw = await self._client.hget(self._hash, experiment)
        return self._seen(Rollout.from_json(orjson.loads(raw))) if raw else None

    async def all(self) -> list[Rollout]:
        with store_errors():
            raw = await self._client.hgetall(self._hash)
        return [self._seen(Rollout.from_json(orjson.loads(v))) for _, v in sorted(raw.items())]

    async def put(self, rollout: Rollout, expected_generation: int | None) -> None:
        holder = self.lease.holder if self.lease is not None and self.lease.held else ""
        lease_key = self.lease.key if self.lease is not None else self._hash
        with store_errors():
            result = await self._put(
                keys=[self._hash, lease_key],
                args=[
                    rollout.experiment,
                    orjson.dumps(rollout.as_json()).decode(),
                    -1 if expected_generation is None else expected_generation,
                    holder,
                ],
            )
        if result in (b"fenced", "fenced"):
            raise RolloutConflict("this controller no longer holds the lease")
        if result in (b"conflict", "conflict"):
            raise RolloutConflict(f"{rollout.experiment} changed meanwhile")
        self._seen(rollout)
        await self._save_durable()

    async def append(self, experiment: str, event: dict[str, Any]) -> None:
        key = self._history_key(experiment)
        with store_errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.lpush(key, orjson.dumps(event))
                pipe.ltrim(key, 0, HISTORY_LIMIT - 1)
                await pipe.execute()
        self._recent.setdefault(experiment, deque(maxlen=DURABLE_HISTORY)).appendleft(event)
        await self._save_durable()

    async def history(self, experiment: str, limit: int) -> list[dict[str, Any]]:
        with store_errors():
            raw = await self._client.lrange(self._history_key(experiment), 0, limit - 1)
        return [orjson.loads(item) for item in raw]

    async def emptied(self) -> bool:
        with store_errors():  # a key that only a Redis that lost everything lacks
            return bool(await self._client.set(self._alive, "1", nx=True))

    def lost(self, present: list[Rollout]) -> list[Rollout]:
        have = {rollout.experiment for rollout in present}
        return [rollout for name, rollout in sorted(self._known.items()) if name not in have]

    async def restore(self, rollout: Rollout, event: dict[str, Any]) -> bool:
        name = rollout.experiment
        entries = [orjson.dumps(entry).decode() for entry in self._recent.get(name, ())]
        with store_errors():
            done = await self._restore(
                keys=[self._hash, self._history_key(name)],
                args=[
                    name,
                    orjson.dumps(rollout.as_json()).decode(),
                    orjson.dumps(event).decode(),
                    HISTORY_LIMIT,
                    *entries,
                ],
            )
        if not int(done):
            return False
        self._seen(rollout)
        self._recent.setdefault(name, deque(maxlen=DURABLE_HISTORY)).appendleft(event)
        self.restored += 1
        log.warning(
            "rollouts: Redis had lost %s (%s, stage %d); put back from this process's copy",
            name,
            rollout.state,
            rollout.stage_index,
        )
        await self._save_durable()
        return True

    async def _save_durable(self) -> None:
        """The state file's copy (rollouts and their recent history), for a re-seed after
        this process restarts too. A failed write is logged once per cause: Redis holds the
        state; the copy is the fallback."""
        if self._durable is None:
            return
        section = {
            "current": {name: r.as_json() for name, r in self._known.items()},
            "history": {name: list(reversed(items)) for name, items in self._recent.items()},
        }
        try:
            await asyncio.to_thread(self._durable.save_section, rollouts=section)
        except OSError as exc:
            cause = f"{exc.strerror or exc}"
            if cause != self._durable_failure:
                log.error("cannot write the rollouts' copy to %s: %s", self._durable.path, cause)
            self._durable_failure = cause
        else:
            self._durable_failure = None


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1
end
return 0
"""


class Lease:
    """Exactly one acting controller among several control processes on one Redis: the
    holder renews a key with an expiry; when it dies the key expires and another takes it
    (within `ttl`). Each new holder gets a higher fencing generation."""

    def __init__(self, client: Redis, prefix: str, owner: str, ttl: float = 5.0) -> None:
        self._client = client
        self.key = f"{{{prefix}}}:controller-lease"
        self._generation_key = f"{{{prefix}}}:controller-generation"
        self.owner = owner
        self.ttl = ttl
        self.holder = ""  # owner:generation while held
        self.generation = 0
        self._renew = client.register_script(_RENEW)

    @property
    def held(self) -> bool:
        return bool(self.holder)

    async def hold(self) -> bool:
        """Acquire or renew; False when another process holds it (or Redis is down)."""
        ms = int(self.ttl * 1000)
        try:
            with store_errors():
                if self.holder and await self._renew(keys=[self.key], args=[self.holder, ms]):
                    return True
                holder = f"{self.owner}:{time.time_ns()}"
                if await self._client.set(self.key, holder, nx=True, px=ms):
                    self.generation = int(await self._client.incr(self._generation_key))
                    self.holder = holder
                    return True
        except StoreUnavailable:
            # Not acting while Redis is away, but the holder is kept: when Redis is back
            # (a Sentinel failover keeps the key) this process renews its own lease at once
            # instead of both waiting for it to expire and racing for it. Writes stay fenced
            # by the key itself, so a stale holder can never write over a successor.
            return False
        self.holder = ""
        return False

    async def release(self) -> None:
        if not self.holder:
            return
        holder, self.holder = self.holder, ""
        script = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end"
        try:
            with store_errors():
                await self._client.eval(script, 1, self.key, holder)
        except StoreUnavailable:
            pass
