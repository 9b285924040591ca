"""Measurements: sufficient statistics per (experiment, phase, arm, metric), written in
batches by proxies (and the outcomes API), read by the statistics worker.

A phase starts whenever an experiment's percentage changes (its id is the flag version that
changed it): arms are compared within a phase, because a pooled comparison across allocation
changes is biased. Writes are deltas that add up, so several proxies' flushes sum exactly:
in this process for the embedded store, HINCRBY/HINCRBYFLOAT in one pipeline with Redis.

Sums are kept per cluster of users, so the statistics can take the user as the unit
(control/stats/clusters.py): cluster = the low bits of the user's hash, each user in exactly
one; requests without a user go to UNCLUSTERED, where each request is its own unit. Distinct
users per arm, for the sample-ratio check, are counted by linear counting (Whang et al.
1990): a bitmap of USER_MAP_BITS per (experiment, phase, arm) where each user sets the bit of
its hash's top bits; bitmaps from several proxies merge by OR (SETBIT in Redis), and the
estimate from the bits set is exact enough (control/stats/checks.py) up to millions of users.

Memory is bounded whatever the number of users: at most CLUSTERS + 1 sums per (experiment,
phase, arm, metric), about 20 KB in Redis for each, and a 128 KiB bitmap per (experiment,
phase, arm).

Exactly once: a batch of deltas carries an id, and a store applies a given id once (Redis:
one Lua script that checks and sets `batch:<id>` with an expiry and applies every increment,
atomically), so a flush retried after a timeout whose batch had landed adds nothing twice.
A sum is never made non-finite: values whose square overflows are refused at the edge
(`check_value`), and a delta that would still take a stored sum to infinity is skipped
(counted, logged once), never persisted.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import time
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis

from abgate.state.errors import store_errors
from abgate.state.state_file import StateFile

log = logging.getLogger("abgate.measurements")
SECTION = "measurements"  # of the state file
MeasureKey = tuple[str, int, str, str, int]  # experiment, phase, arm, metric, cluster
UsersKey = tuple[str, int, str]  # experiment, phase, arm
CLUSTERS = 128  # clusters of users per arm (a power of two): plenty for the delta method
UNCLUSTERED = -1  # requests with no user behind them (no sticky key): each its own unit
USER_MAP_BITS = 1 << 20  # bits of a distinct-users bitmap: 128 KiB
# The largest magnitude a measured value may have: its square (the sum of squares) stays
# finite with room for millions of them (sqrt of the largest double is about 1.3e154).
MAX_VALUE = 1e150
BATCH_TTL = 3600  # seconds a batch id is remembered: a retry within it is a no-op
SEEN_BATCHES = 4096  # ids the embedded store remembers (saved with the sums they added)
READ_PIECE = 1000  # hash fields per reply when the statistics read an experiment from Redis


def phases_key(prefix: str, experiment: str) -> str:
    """The Redis hash of an experiment's phases (the flag store re-seeds it too)."""
    return f"{{{prefix}}}:phases:{experiment}"


def check_value(value: float) -> str | None:
    """Why `value` cannot be measured (None: it can): non-finite, or too large to square."""
    if not math.isfinite(value):
        return f"{value!r} is not a finite number"
    if abs(value) > MAX_VALUE:
        return f"{value!r} is too large (at most {MAX_VALUE:g} in magnitude)"
    return None


def cluster_of(user: int | None) -> int:
    """The cluster of a user's 32-bit hash, UNCLUSTERED when there is no user."""
    return user & (CLUSTERS - 1) if user is not None else UNCLUSTERED


@dataclass(slots=True)
class Sums:
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.total_sq += value * value

    def merge(self, other: Sums) -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq

    @property
    def finite(self) -> bool:
        return math.isfinite(self.total) and math.isfinite(self.total_sq)


@dataclass(frozen=True, slots=True)
class Phase:
    id: int  # the flag version that set this percentage
    basis_points: int
    started_at: float


class MeasurementStore(Protocol):
    async def add(self, batch: Mapping[MeasureKey, Sums], batch_id: str | None = None) -> None:
        """Add the deltas, all or none; a `batch_id` already applied is a no-op."""

    async def start_phase(self, experiment: str, phase: Phase) -> None: ...

    async def phases(self, experiment: str) -> list[Phase]: ...

    async def read(self, experiment: str) -> tuple[list[Phase], dict[MeasureKey, Sums]]: ...

    async def add_users(self, batch: Mapping[UsersKey, Sequence[int]]) -> None:
        """Set these bits of each arm's distinct-users bitmap (idempotent)."""

    async def users(self, experiment: str) -> dict[tuple[int, str], int]:
        """(phase, arm) -> bits set in its distinct-users bitmap."""
        ...


class Skipped:
    """Deltas a store skipped because they would make a stored sum non-finite: counted,
    logged once per (experiment, metric)."""

    def __init__(self) -> None:
        self.count = 0
        self._said: set[tuple[str, str]] = set()

    def add(self, key: MeasureKey) -> None:
        self.count += 1
        experiment, phase, arm, metric, _ = key
        if (experiment, metric) not in self._said:
            self._said.add((experiment, metric))
            log.error(
                "measurements: skipped a delta of %s/%s (phase %d, arm %s): it would make "
                "the stored sum non-finite",
                experiment,
                metric,
                phase,
                arm,
            )


class MemoryMeasurements:
    """The embedded store. With a state file, phases and sums are saved in its
    `measurements` section at most every `save_every` seconds and on `close`, so a restart
    keeps an experiment's data."""

    def __init__(self, state: StateFile | None = None, save_every: float = 5.0) -> None:
        self._sums: dict[MeasureKey, Sums] = {}
        self._phases: dict[str, dict[int, Phase]] = {}
        self._users: dict[UsersKey, bytearray] = {}
        self._packed: dict[UsersKey, str] = {}  # compressed for the state file, until changed
        self._state = state
        self._save_every = save_every
        self._saved_at = time.monotonic()
        self._dirty = False
        self._batches: deque[str] = deque(maxlen=SEEN_BATCHES)  # ids applied, newest last
        self.save_failures = 0
        self.skipped = Skipped()
        if state is not None:
            self._restore(state.section(SECTION))

    async def add(self, batch: Mapping[MeasureKey, Sums], batch_id: str | None = None) -> None:
        if batch_id is not None:
            if batch_id in self._batches:
                return
            self._batches.append(batch_id)
        for key, sums in batch.items():
            merged = Sums(sums.count, sums.total, sums.total_sq)
            held = self._sums.get(key)
            if held is not None:
                merged.merge(held)
            if not merged.finite:  # never a non-finite sum: this delta is skipped
                self.skipped.add(key)
                continue
            self._sums[key] = merged
        self._changed()

    def seen(self, batch_id: str) -> bool:
        """Whether this batch was applied (its answer may have been lost: sent again)."""
        return batch_id in self._batches

    async def start_phase(self, experiment: str, phase: Phase) -> None:
        self._phases.setdefault(experiment, {}).setdefault(phase.id, phase)
        self._changed()

    async def add_users(self, batch: Mapping[UsersKey, Sequence[int]]) -> None:
        for key, bits in batch.items():
            bitmap = self._users.get(key)
            if bitmap is None:
                bitmap = self._users[key] = bytearray(USER_MAP_BITS // 8)
            for index in bits:
                bitmap[index >> 3] |= 1 << (index & 7)
            self._packed.pop(key, None)
        self._changed()

    async def users(self, experiment: str) -> dict[tuple[int, str], int]:
        return {
            (phase, arm): int.from_bytes(bitmap).bit_count()
            for (name, phase, arm), bitmap in self._users.items()
            if name == experiment
        }

    def _changed(self) -> None:
        self._dirty = True
        if time.monotonic() - self._saved_at >= self._save_every:
            self.save()

    def save(self) -> None:
        """Write the section now if anything changed; a failure is logged and retried."""
        if self._state is None or not self._dirty:
            return
        self._saved_at = time.monotonic()
        section = {
            "phases": [
                [e, p.id, p.basis_points, p.started_at]
                for e, phases in self._phases.items()
                for p in phases.values()
            ],
            "sums": [[*key, s.count, s.total, s.total_sq] for key, s in self._sums.items()],
            # Compressed: a bitmap is mostly zeros until an arm has hundreds of thousands.
            "users": [[*key, self._pack(key, bitmap)] for key, bitmap in self._users.items()],
            # With the sums they added: a batch applied and saved whose answer was lost is
            # still known after a restart (abgate run's control process restarting).
            "batches": list(self._batches),
        }
        try:
            self._state.save_section(**{SECTION: section})
        except OSError as exc:
            self.save_failures += 1
            if self.save_failures == 1:
                log.error(
                    "cannot save measurements to %s: %s (kept in memory)",
                    self._state.path,
                    exc.strerror or exc,
                )
            return
        self._dirty = False

    def _pack(self, key: UsersKey, bitmap: bytearray) -> str:
        """A bitmap for the state file, compressed once per change (the save runs on the
        event loop of `abgate run`: old phases' bitmaps are not compressed again)."""
        packed = self._packed.get(key)
        if packed is None:
            packed = self._packed[key] = base64.b64encode(zlib.compress(bitmap, 1)).decode()
        return packed

    def _restore(self, section: Any) -> None:
        """Each phase, sum and bitmap on its own: an unreadable entry loses that entry only
        (a sum saved as null once dropped every sum of every experiment)."""
        if not isinstance(section, dict):
            if section is not None:
                log.error("ignoring unreadable measurements in the state file: not an object")
            return
        lost: dict[str, int] = {}
        for part, restore in (
            ("phases", self._restore_phase),
            ("sums", self._restore_sums),
            ("users", self._restore_users),
        ):
            entries = section.get(part, [])
            for entry in entries if isinstance(entries, list) else [entries]:
                try:
                    restore(entry)
                except (TypeError, ValueError, zlib.error) as exc:
                    lost[part] = lost.get(part, 0) + 1
                    if lost[part] == 1:
                        log.error(
                            "ignoring an unreadable entry of measurements.%s in the state "
                            "file: %s (the rest is kept)",
                            part,
                            exc,
                        )
        batches = section.get("batches", [])
        if isinstance(batches, list):
            self._batches.extend(str(batch) for batch in batches)
        if lost:
            log.error(
                "measurements restored from the state file without %s",
                ", ".join(f"{n} unreadable {part}" for part, n in lost.items()),
            )

    def _restore_phase(self, entry: Any) -> None:
        experiment, phase, basis_points, started = entry
        self._phases.setdefault(str(experiment), {})[int(phase)] = Phase(
            int(phase), int(basis_points), float(started)
        )

    def _restore_sums(self, entry: Any) -> None:
        if len(entry) == 7:  # written before sums were kept per cluster
            entry = [*entry[:4], UNCLUSTERED, *entry[4:]]
        experiment, phase, arm, metric, cluster, count, total, total_sq = entry
        sums = Sums(int(count), float(total), float(total_sq))
        if not sums.finite:
            raise ValueError(f"a non-finite sum for {experiment}/{phase}/{arm}/{metric}")
        self._sums[(str(experiment), int(phase), str(arm), str(metric), int(cluster))] = sums

    def _restore_users(self, entry: Any) -> None:
        experiment, phase, arm, packed = entry
        bitmap = bytearray(zlib.decompress(base64.b64decode(packed)))
        if len(bitmap) != USER_MAP_BITS // 8:
            raise ValueError(f"a users bitmap of {len(bitmap)} bytes")
        self._users[(str(experiment), int(phase), str(arm))] = bitmap

    async def phases(self, experiment: str) -> list[Phase]:
        return sorted(self._phases.get(experiment, {}).values(), key=lambda p: p.id)

    async def read(self, experiment: str) -> tuple[list[Phase], dict[MeasureKey, Sums]]:
        phases = await self.phases(experiment)
        sums = {
            k: Sums(v.count, v.total, v.total_sq)
            for k, v in self._sums.items()
            if k[0] == experiment
        }
        return phases, sums


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


class RedisMeasurements:
    """{prefix}:stats:EXPERIMENT hash, fields `phase|arm|metric|cluster|count|sum|sum_sq`
    (without `cluster|` when written before sums were kept per cluster: UNCLUSTERED);
    {prefix}:phases:EXPERIMENT hash, phase id -> "basis_points|started_at";
    {prefix}:batch:ID string, a batch of deltas applied (expires after BATCH_TTL)."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._add = client.register_script(_ADD)
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
