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
"""

from __future__ import annotations

import base64
import logging
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis

from state.errors import store_errors
from state.flag_file import FlagFile

log = logging.getLogger("abgate.measurements")
SECTION = "measurements"  # of the state file
MeasureKey = tuple[str, int, str, str, int]  # experiment, phase, arm, metric, cluster
UsersKey = tuple[str, int, str]  # experiment, phase, arm
CLUSTERS = 128  # clusters of users per arm (a power of two): plenty for the delta method
UNCLUSTERED = -1  # requests with no user behind them (no sticky key): each its own unit
USER_MAP_BITS = 1 << 20  # bits of a distinct-users bitmap: 128 KiB
# Ids of the batches the embedded store applied last (state/live_server.py): a batch sent
# again, its answer lost, is recognised by its id and applied once; far more than a data
# plane ever has unanswered, and kept with the sums so a restart remembers them too.
BATCH_IDS_KEPT = 10_000
READ_PIECE = 1000  # hash fields per reply when the statistics read an experiment from Redis


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


@dataclass(frozen=True, slots=True)
class Phase:
    id: int  # the flag version that set this percentage
    basis_points: int
    started_at: float


class MeasurementStore(Protocol):
    async def add(self, batch: Mapping[MeasureKey, Sums]) -> None: ...

    async def start_phase(self, experiment: str, phase: Phase) -> None: ...

    async def phases(self, experiment: str) -> list[Phase]: ...

    async def read(self, experiment: str) -> tuple[list[Phase], dict[MeasureKey, Sums]]: ...

    async def add_users(self, batch: Mapping[UsersKey, Sequence[int]]) -> None:
        """Set these bits of each arm's distinct-users bitmap (idempotent)."""

    async def users(self, experiment: str) -> dict[tuple[int, str], int]:
        """(phase, arm) -> bits set in its distinct-users bitmap."""
        ...


class MemoryMeasurements:
    """The embedded store. With a state file, phases and sums are saved in its
    `measurements` section at most every `save_every` seconds and on `close`, so a restart
    keeps an experiment's data."""

    def __init__(self, state: FlagFile | None = None, save_every: float = 5.0) -> None:
        self._sums: dict[MeasureKey, Sums] = {}
        self._phases: dict[str, dict[int, Phase]] = {}
        self._users: dict[UsersKey, bytearray] = {}
        self._packed: dict[UsersKey, str] = {}  # compressed for the state file, until changed
        self._state = state
        self._save_every = save_every
        self._saved_at = time.monotonic()
        self._dirty = False
        self._batches: dict[str, None] = {}  # applied batch ids, oldest first
        self.save_failures = 0
        if state is not None:
            self._restore(state.section(SECTION))

    async def add(self, batch: Mapping[MeasureKey, Sums]) -> None:
        for key, sums in batch.items():
            self._sums.setdefault(key, Sums()).merge(sums)
        self._changed()

    async def start_phase(self, experiment: str, phase: Phase) -> None:
        self._phases.setdefault(experiment, {}).setdefault(phase.id, phase)
        self._changed()

    async def add_users(self, batch: Mapping[UsersKey, Sequence[int]]) -> None:
        self._set_bits(batch)
        self._changed()

    def _set_bits(self, batch: Mapping[UsersKey, Sequence[int]]) -> None:
        for key, bits in batch.items():
            bitmap = self._users.get(key)
            if bitmap is None:
                bitmap = self._users[key] = bytearray(USER_MAP_BITS // 8)
            for index in bits:
                bitmap[index >> 3] |= 1 << (index & 7)
            self._packed.pop(key, None)

    def apply_batch(
        self,
        batch_id: str,
        phases: Sequence[tuple[str, Phase]],
        sums: Mapping[MeasureKey, Sums],
        users: Mapping[UsersKey, Sequence[int]],
    ) -> bool:
        """One data plane's flush, applied exactly once by its id (False: applied before).
        All of it or nothing: no await in between, and saved with the sums it added."""
        if batch_id in self._batches:
            return False
        for experiment, phase in phases:
            self._phases.setdefault(experiment, {}).setdefault(phase.id, phase)
        for key, delta in sums.items():
            self._sums.setdefault(key, Sums()).merge(delta)
        self._set_bits(users)
        self._batches[batch_id] = None
        if len(self._batches) > BATCH_IDS_KEPT:
            del self._batches[next(iter(self._batches))]
        self._changed()
        return True

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
        if section is None:
            return
        try:
            for experiment, phase, basis_points, started in section["phases"]:
                self._phases.setdefault(str(experiment), {})[int(phase)] = Phase(
                    int(phase), int(basis_points), float(started)
                )
            for entry in section["sums"]:
                if len(entry) == 7:  # written before sums were kept per cluster
                    entry = [*entry[:4], UNCLUSTERED, *entry[4:]]
                experiment, phase, arm, metric, cluster, count, total, total_sq = entry
                key = (str(experiment), int(phase), str(arm), str(metric), int(cluster))
                self._sums[key] = Sums(int(count), float(total), float(total_sq))
            for experiment, phase, arm, packed in section.get("users", []):
                bitmap = bytearray(zlib.decompress(base64.b64decode(packed)))
                if len(bitmap) != USER_MAP_BITS // 8:
                    raise ValueError(f"a users bitmap of {len(bitmap)} bytes")
                self._users[(str(experiment), int(phase), str(arm))] = bitmap
            self._batches = {str(batch): None for batch in section.get("batches", [])}
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            log.error("ignoring unreadable measurements in the state file: %s", exc)
            self._sums, self._phases, self._users, self._batches = {}, {}, {}, {}

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


class RedisMeasurements:
    """{prefix}:stats:EXPERIMENT hash, fields `phase|arm|metric|cluster|count|sum|sum_sq`
    (without `cluster|` when written before sums were kept per cluster: UNCLUSTERED);
    {prefix}:phases:EXPERIMENT hash, phase id -> "basis_points|started_at"."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def _stats(self, experiment: str) -> str:
        return f"{{{self._prefix}}}:stats:{experiment}"

    def _phases(self, experiment: str) -> str:
        return f"{{{self._prefix}}}:phases:{experiment}"

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

    async def add(self, batch: Mapping[MeasureKey, Sums]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for (experiment, phase, arm, metric, cluster), sums in batch.items():
            key, field = self._stats(experiment), f"{phase}|{arm}|{metric}|{cluster}"
            pipe.hincrby(key, f"{field}|count", sums.count)
            pipe.hincrbyfloat(key, f"{field}|sum", sums.total)
            pipe.hincrbyfloat(key, f"{field}|sum_sq", sums.total_sq)
        with store_errors():
            await pipe.execute()

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
        between pieces. Like the flushes' pipelines, a read is not one atomic snapshot: a
        flush landing meanwhile may show in part, and the next read has it whole."""
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
