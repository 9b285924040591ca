"""Measurements: sufficient statistics per (experiment, phase, arm, metric), written in
batches by proxies (and the outcomes API), read by the statistics worker.

A phase starts whenever an experiment's percentage changes (its id is the flag version that
changed it): arms are compared within a phase, because a pooled comparison across allocation
changes is biased. Writes are deltas that add up, so several proxies' flushes sum exactly:
in this process for the embedded store, HINCRBY/HINCRBYFLOAT in one pipeline with Redis.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from config.flags import FlagStoreUnavailable

MeasureKey = tuple[str, int, str, str]  # experiment, phase, arm, metric


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

    async def read(self, experiment: str) -> tuple[list[Phase], dict[MeasureKey, Sums]]: ...


class MemoryMeasurements:
    def __init__(self) -> None:
        self._sums: dict[MeasureKey, Sums] = {}
        self._phases: dict[str, dict[int, Phase]] = {}

    async def add(self, batch: Mapping[MeasureKey, Sums]) -> None:
        for key, sums in batch.items():
            self._sums.setdefault(key, Sums()).merge(sums)

    async def start_phase(self, experiment: str, phase: Phase) -> None:
        self._phases.setdefault(experiment, {}).setdefault(phase.id, phase)

    async def read(self, experiment: str) -> tuple[list[Phase], dict[MeasureKey, Sums]]:
        phases = sorted(self._phases.get(experiment, {}).values(), key=lambda p: p.id)
        sums = {k: Sums(v.count, v.total, v.total_sq) for k, v in self._sums.items()
                if k[0] == experiment}
        return phases, sums


class RedisMeasurements:
    """{prefix}:stats:EXPERIMENT hash, fields `phase|arm|metric|count|sum|sum_sq`;
    {prefix}:phases:EXPERIMENT hash, phase id -> "basis_points|started_at"."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def _stats(self, experiment: str) -> str:
        return f"{{{self._prefix}}}:stats:{experiment}"

    def _phases(self, experiment: str) -> str:
        return f"{{{self._prefix}}}:phases:{experiment}"

    async def add(self, batch: Mapping[MeasureKey, Sums]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for (experiment, phase, arm, metric), sums in batch.items():
            key, field = self._stats(experiment), f"{phase}|{arm}|{metric}"
            pipe.hincrby(key, f"{field}|count", sums.count)
            pipe.hincrbyfloat(key, f"{field}|sum", sums.total)
            pipe.hincrbyfloat(key, f"{field}|sum_sq", sums.total_sq)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise FlagStoreUnavailable(str(exc)) from exc

    async def start_phase(self, experiment: str, phase: Phase) -> None:
        try:
            await self._client.hsetnx(self._phases(experiment), str(phase.id),
                                      f"{phase.basis_points}|{phase.started_at}")
        except (RedisError, OSError) as exc:
            raise FlagStoreUnavailable(str(exc)) from exc

    async def read(self, experiment: str) -> tuple[list[Phase], dict[MeasureKey, Sums]]:
        try:
            raw_phases = await self._client.hgetall(self._phases(experiment))
            raw = await self._client.hgetall(self._stats(experiment))
        except (RedisError, OSError) as exc:
            raise FlagStoreUnavailable(str(exc)) from exc
        phases = []
        for phase_id, value in raw_phases.items():
            basis_points, started = str(value).split("|")
            phases.append(Phase(int(phase_id), int(basis_points), float(started)))
        sums: dict[MeasureKey, Sums] = {}
        for field, value in raw.items():
            phase, arm, metric, part = str(field).rsplit("|", 3)
            entry = sums.setdefault((experiment, int(phase), arm, metric), Sums())
            if part == "count":
                entry.count = int(value)
            elif part == "sum":
                entry.total = float(value)
            else:
                entry.total_sq = float(value)
        return sorted(phases, key=lambda p: p.id), sums


def phase_of(version: int, basis_points: int) -> Phase:
    return Phase(version, basis_points, time.time())
