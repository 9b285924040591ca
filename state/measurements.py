"""Measurements: sufficient statistics per (experiment, phase, arm, metric), written in
batches by proxies (and the outcomes API), read by the statistics worker.

A phase starts whenever an experiment's percentage changes (its id is the flag version that
changed it): arms are compared within a phase, because a pooled comparison across allocation
changes is biased. Writes are deltas that add up, so several proxies' flushes sum exactly:
in this process for the embedded store, HINCRBY/HINCRBYFLOAT in one pipeline with Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis

from state.errors import store_errors
from state.flag_file import FlagFile

log = logging.getLogger("abgate.measurements")
SECTION = "measurements"  # of the state file
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

    async def phases(self, experiment: str) -> list[Phase]: ...

    async def read(self, experiment: str) -> tuple[list[Phase], dict[MeasureKey, Sums]]: ...


class MemoryMeasurements:
    """The embedded store. With a state file, phases and sums are saved in its
    `measurements` section at most every `save_every` seconds and on `close`, so a restart
    keeps an experiment's data."""

    def __init__(self, state: FlagFile | None = None, save_every: float = 5.0) -> None:
        self._sums: dict[MeasureKey, Sums] = {}
        self._phases: dict[str, dict[int, Phase]] = {}
        self._state = state
        self._save_every = save_every
        self._saved_at = time.monotonic()
        self._dirty = False
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

    def _restore(self, section: Any) -> None:
        if section is None:
            return
        try:
            for experiment, phase, basis_points, started in section["phases"]:
                self._phases.setdefault(str(experiment), {})[int(phase)] = Phase(
                    int(phase), int(basis_points), float(started)
                )
            for experiment, phase, arm, metric, count, total, total_sq in section["sums"]:
                self._sums[(str(experiment), int(phase), str(arm), str(metric))] = Sums(
                    int(count), float(total), float(total_sq)
                )
        except (KeyError, TypeError, ValueError) as exc:
            log.error("ignoring unreadable measurements in the state file: %s", exc)
            self._sums, self._phases = {}, {}

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
        phases = await self.phases(experiment)
        with store_errors():
            raw = await self._client.hgetall(self._stats(experiment))
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
        return phases, sums
