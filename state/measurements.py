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
The Redis store is state/redis_measurements.py. Outcomes waiting for their decision's
maturity (control/maturing.py) are kept by the store too, so a restart loses none.
A sum is never made non-finite: values whose square overflows are refused at the edge
(`check_value`), and a delta that would still take a stored sum to infinity is skipped
(counted, logged once), never persisted.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import itertools
import logging
import math
import time
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from abgate.config.errors import AbgateError
from abgate.state.state_file import StateFile

log = logging.getLogger("abgate.measurements")
SECTION = "measurements"  # of the state file
MeasureKey = tuple[str, int, str, str, int]  # experiment, phase, arm, metric, cluster
UsersKey = tuple[str, int, str]  # experiment, phase, arm
# An outcome posted with a covariate (CUPED, control/stats/cuped.py) adds two more sums under
# its metric's name with these suffixes (metric names cannot contain '~'): the covariate's,
# and the covariate times the value's
PRE = "~pre"
CROSS = "~cross"
CLUSTERS = 128  # clusters of users per arm (a power of two): plenty for the delta method
UNCLUSTERED = -1  # requests with no user behind them (no sticky key): each its own unit
USER_MAP_BITS = 1 << 20  # bits of a distinct-users bitmap: 128 KiB
# The largest magnitude a measured value may have: every statistic of the sums stays finite
# (a cluster's sum of 10^9 of them squared is 1e48, a mean's fourth power 1e60). At 1e150, as
# before, values near 1e100 overflowed the report's tests (a trial posted them).
MAX_VALUE = 1e15
BATCH_TTL = 3600  # seconds a batch id is remembered: a retry within it is a no-op
SEEN_BATCHES = 4096  # ids the embedded store remembers (saved with the sums they added)
READ_PIECE = 1000  # hash fields per reply when the statistics read an experiment from Redis
MAX_HELD = 1_000_000  # outcomes waiting for their decision's maturity, at once
# An outcome waiting for its decision's maturity: where it counts, its value, and when
# (Unix seconds) it may count (control/maturing.py)
HeldOutcome = tuple[MeasureKey, float, float]


class MaturingFull(AbgateError):
    """More outcomes would wait for their decisions' maturity than MAX_HELD."""

    def __init__(self, waiting: int, limit: int) -> None:
        super().__init__(
            f"{waiting:,} outcome values already wait for their decisions' maturity (at most "
            f"{limit:,}; an outcome with a covariate is three)"
        )


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

    async def hold(self, outcomes: Sequence[HeldOutcome]) -> None:
        """Keep these outcomes, all or none, until they mature; MaturingFull past MAX_HELD."""

    async def mature(self, now: float) -> int:
        """Add every outcome mature by `now` to the sums, each once (removed in the same
        step); how many."""
        ...

    async def held(self) -> int:
        """Outcomes waiting for their maturity."""
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
    """The embedded store. With a state file, phases, sums and the outcomes waiting for
    their maturity are saved in its `measurements` section at most every `save_every`
    seconds and on `close`, so a restart keeps an experiment's data. An outcome that matures
    leaves the waiting heap and joins the sums in one step, saved in one write: once."""

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
        # outcomes waiting for their maturity, soonest first: (mature_at, order, key, value)
        self._held: list[tuple[float, int, MeasureKey, float]] = []
        self._order = itertools.count()
        self.save_failures = 0
        self.skipped = Skipped()
        if state is not None:
            self._restore(state.section(SECTION))

    async def add(self, batch: Mapping[MeasureKey, Sums], batch_id: str | None = None) -> None:
        if batch_id is not None:
            if batch_id in self._batches:
                return
            self._batches.append(batch_id)
        self._apply(batch)
        self._changed()

    def _apply(self, batch: Mapping[MeasureKey, Sums]) -> None:
        for key, sums in batch.items():
            merged = Sums(sums.count, sums.total, sums.total_sq)
            held = self._sums.get(key)
            if held is not None:
                merged.merge(held)
            if not merged.finite:  # never a non-finite sum: this delta is skipped
                self.skipped.add(key)
                continue
            self._sums[key] = merged

    async def held(self) -> int:
        return len(self._held)

    async def hold(self, outcomes: Sequence[HeldOutcome]) -> None:
        if len(self._held) + len(outcomes) > MAX_HELD:
            raise MaturingFull(len(self._held), MAX_HELD)
        for key, value, mature_at in outcomes:
            heapq.heappush(self._held, (mature_at, next(self._order), key, value))
        if outcomes:
            self._changed()

    async def mature(self, now: float) -> int:
        batch: dict[MeasureKey, Sums] = {}
        moved = 0
        while self._held and self._held[0][0] <= now:
            _, _, key, value = heapq.heappop(self._held)
            batch.setdefault(key, Sums()).add(value)
            moved += 1
        if moved:
            self._apply(batch)
            self._changed()
        return moved

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

    async def save_every_while(self) -> None:
        """Save what changed every `save_every` seconds, until cancelled (an owned task):
        a batch accepted when nothing follows it reaches the file within that time too
        (saving on a change alone waited for the next change, which may never come)."""
        while True:
            await asyncio.sleep(self._save_every)
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
            "held": [[at, *key, value] for at, _, key, value in self._held],
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
            ("held", self._restore_held),
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

    def _restore_held(self, entry: Any) -> None:
        at, experiment, phase, arm, metric, cluster, value = entry
        if check_value(float(value)) is not None or not math.isfinite(float(at)):
            raise ValueError(f"a waiting outcome of {experiment}/{metric} that is not finite")
        key = (str(experiment), int(phase), str(arm), str(metric), int(cluster))
        heapq.heappush(self._held, (float(at), next(self._order), key, float(value)))

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
