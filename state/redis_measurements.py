"""The measurement store on Redis: what several sidecars and control instances share.

Every write is one atomic step, so a retry or a second control instance never counts twice:
a batch of deltas is one Lua script that checks and sets its `batch:<id>` marker and applies
every increment; outcomes waiting for their decision's maturity are members of a sorted set
scored by when they mature, and one script moves each due one into the sums as it removes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from abgate.state.errors import store_errors
from abgate.state.measurements import (
    BATCH_TTL,
    MAX_HELD,
    READ_PIECE,
    UNCLUSTERED,
    HeldOutcome,
    MaturingFull,
    MeasureKey,
    Phase,
    Skipped,
    Sums,
    UsersKey,
    phases_key,
)

_ADD = """
-- KEYS[1]: the batch's marker; KEYS[2..]: the stats hashes. ARGV[1]: the marker's expiry
-- (seconds), then per group of sums: the index of its hash in KEYS, its field prefix, and
-- its count, sum and sum of squares deltas. A batch id seen before is a no-op (a retry of
-- a batch that had landed). Checks first, writes after: a group whose sums would become
-- non-finite is skipped whole (and named in the reply), never half written.
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return {'duplicate'} end
local skipped = {'applied'}
local per = 5
for i = 0, (#ARGV - 1) / per - 1 do
  local base = 2 + i * per
  local key, field = KEYS[tonumber(ARGV[base])], ARGV[base + 1]
  local total = tonumber(redis.call('HGET', key, field .. '|sum') or '0') + tonumber(ARGV[base + 3])
  local square = tonumber(redis.call('HGET', key, field .. '|sum_sq') or '0')
    + tonumber(ARGV[base + 4])
  if total ~= total or square ~= square or math.abs(total) == math.huge
      or math.abs(square) == math.huge then
    skipped[#skipped + 1] = key .. '|' .. field
  else
    redis.call('HINCRBY', key, field .. '|count', ARGV[base + 2])
    redis.call('HINCRBYFLOAT', key, field .. '|sum', ARGV[base + 3])
    redis.call('HINCRBYFLOAT', key, field .. '|sum_sq', ARGV[base + 4])
  end
end
return skipped
"""


_MATURE = """
-- KEYS[1]: the sorted set of outcomes waiting for maturity. ARGV[1]: now, ARGV[2]: at most
-- this many, ARGV[3]: the stats hashes' prefix. Members are `id|value|value²|experiment|
-- phase|arm|metric|cluster`: each due one is added to its experiment's sums and removed in
-- the same script, so it counts once whichever control instance runs it, and never lost.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  local _, value, square, experiment, field =
    string.match(member, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
  local key = ARGV[3] .. experiment
  redis.call('HINCRBY', key, field .. '|count', 1)
  redis.call('HINCRBYFLOAT', key, field .. '|sum', value)
  redis.call('HINCRBYFLOAT', key, field .. '|sum_sq', square)
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""
MATURE_PIECE = 5000  # outcomes one script moves: the server is not held long


class RedisMeasurements:
    """{prefix}:stats:EXPERIMENT hash, fields `phase|arm|metric|cluster|count|sum|sum_sq`
    (without `cluster|` when written before sums were kept per cluster: UNCLUSTERED);
    {prefix}:phases:EXPERIMENT hash, phase id -> "basis_points|started_at";
    {prefix}:batch:ID string, a batch of deltas applied (expires after BATCH_TTL);
    {prefix}:maturing sorted set, outcomes waiting for their decision's maturity."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._add = client.register_script(_ADD)
        self._mature = client.register_script(_MATURE)
        self._maturing = f"{{{prefix}}}:maturing"
        self.skipped = Skipped()
        self.duplicates = 0  # batches retried after they had landed

    def _stats(self, experiment: str) -> str:
        return f"{{{self._prefix}}}:stats:{experiment}"

    def _phases(self, experiment: str) -> str:
        return phases_key(self._prefix, experiment)

    def _users(self, experiment: str, phase: int | None = None, arm: str | None = None) -> str:
        """The set of an experiment's bitmaps ("phase|arm"), or one bitmap."""
        base = f"{{{self._prefix}}}:users:{experiment}"
        return base if phase is None else f"{base}:{phase}:{arm}"

    async def add_users(self, batch: Mapping[UsersKey, Sequence[int]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for (experiment, phase, arm), bits in batch.items():
            pipe.sadd(self._users(experiment), f"{phase}|{arm}")
            key = self._users(experiment, phase, arm)
            for index in bits:
                pipe.setbit(key, index, 1)
        with store_errors():
            await pipe.execute()

    async def users(self, experiment: str) -> dict[tuple[int, str], int]:
        with store_errors():
            members = sorted(str(m) for m in await self._client.smembers(self._users(experiment)))
            pipe = self._client.pipeline(transaction=False)
            keys = []
            for member in members:
                phase, arm = member.split("|", 1)
                keys.append((int(phase), arm))
                pipe.bitcount(self._users(experiment, int(phase), arm))
            counts = await pipe.execute()
        return {key: int(count) for key, count in zip(keys, counts, strict=True)}

    async def add(self, batch: Mapping[MeasureKey, Sums], batch_id: str | None = None) -> None:
        """One atomic script: every delta or none, and a batch id applied once."""
        keys = [f"{{{self._prefix}}}:batch:{batch_id or os.urandom(12).hex()}"]
        index: dict[str, int] = {}
        args: list[str | int | float] = [BATCH_TTL]
        fields: dict[str, MeasureKey] = {}
        for key, sums in batch.items():
            experiment, phase, arm, metric, cluster = key
            if not sums.finite:  # never sent: Redis would refuse it half-way
                self.skipped.add(key)
                continue
            stats = self._stats(experiment)
            if stats not in index:
                keys.append(stats)
                index[stats] = len(keys)  # Lua's KEYS count from 1
            field = f"{phase}|{arm}|{metric}|{cluster}"
            fields[f"{stats}|{field}"] = key
            args += [index[stats], field, sums.count, repr(sums.total), repr(sums.total_sq)]
        if len(keys) == 1:
            return
        with store_errors():
            reply = await self._add(keys=keys, args=args)
        outcome, *skipped = (str(item) for item in reply)
        if outcome == "duplicate":
            self.duplicates += 1
        for name in skipped:
            self.skipped.add(fields[name])

    async def held(self) -> int:
        with store_errors():
            return int(await self._client.zcard(self._maturing))

    async def hold(self, outcomes: Sequence[HeldOutcome]) -> None:
        """One ZADD: all or none. The bound is checked first, not in the same step (two
        posts at once may pass it by a batch)."""
        if not outcomes:
            return
        waiting = await self.held()
        if waiting + len(outcomes) > MAX_HELD:
            raise MaturingFull(waiting, MAX_HELD)
        members: dict[str, float] = {}
        for (experiment, phase, arm, metric, cluster), value, mature_at in outcomes:
            unique = os.urandom(8).hex()
            square = value * value
            member = f"{unique}|{value!r}|{square!r}|{experiment}|{phase}|{arm}|{metric}|{cluster}"
            members[member] = mature_at
        with store_errors():
            await self._client.zadd(self._maturing, members)

    async def mature(self, now: float) -> int:
        moved = 0
        prefix = f"{{{self._prefix}}}:stats:"
        with store_errors():
            while True:
                count = int(
                    await self._mature(
                        keys=[self._maturing], args=[repr(now), MATURE_PIECE, prefix]
                    )
                )
                moved += count
                if count < MATURE_PIECE:
                    return moved

    async def start_phase(self, experiment: str, phase: Phase) -> None:
        with store_errors():
            await self._client.hsetnx(
                self._phases(experiment), str(phase.id), f"{phase.basis_points}|{phase.started_at}"
            )

    async def phases(self, experiment: str) -> list[Phase]:
        with store_errors():
            raw_phases = await self._client.hgetall(self._phases(experiment))
        phases = []
        for phase_id, value in raw_phases.items():
            basis_points, started = str(value).split("|")
            phases.append(Phase(int(phase_id), int(basis_points), float(started)))
        return sorted(phases, key=lambda p: p.id)

    async def read(self, experiment: str) -> tuple[list[Phase], dict[MeasureKey, Sums]]:
        """Every sum of an experiment, read in pieces of READ_PIECE fields (HSCAN): no reply
        is large (30 phases of 128 clusters are some 70,000 fields), and the loop is free
        between pieces. Not one atomic snapshot: a batch landing meanwhile may show in
        part (its script is atomic, the scan is not), and the next read has it whole."""
        phases = await self.phases(experiment)
        sums: dict[MeasureKey, Sums] = {}
        key, cursor = self._stats(experiment), 0
        with store_errors():
            while True:
                cursor, piece = await self._client.hscan(key, cursor, count=READ_PIECE)
                assert isinstance(piece, dict)  # field -> value (no_values is not asked)
                _parse_sums(experiment, piece, sums)
                if cursor == 0:
                    break
        return phases, sums


def _parse_sums(experiment: str, raw: Mapping[Any, Any], sums: dict[MeasureKey, Sums]) -> None:
    """Fields `phase|arm|metric|cluster|part` (a field seen twice is simply set again)."""
    for field, value in raw.items():
        head, cluster, part = str(field).rsplit("|", 2)
        if cluster.lstrip("-").isdigit() and head.count("|") >= 2:
            phase, arm, metric = head.split("|", 2)
            at = int(cluster)
        else:  # phase|arm|metric|part, written before sums were kept per cluster
            phase, arm = head.split("|", 1)
            metric, at = cluster, UNCLUSTERED
        entry = sums.setdefault((experiment, int(phase), arm, metric, at), Sums())
        if part == "count":
            entry.count = int(value)
        elif part == "sum":
            entry.total = float(value)
        else:
            entry.total_sq = float(value)
