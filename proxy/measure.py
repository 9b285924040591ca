"""Per-request measurements kept as in-memory sums, flushed as deltas once a second.

Recording touches only objects in memory: each destination caches the `Sums` of its current
(phase, metric); `drain` hands the whole batch to the flusher and bumps a generation so the
caches refetch. The flusher is a task the data plane owns; it never runs on a request.

Exactly once: each batch of deltas gets an id when it is first sent, and a batch that failed
is sent again as it was, with the same id, before anything newer (the store applies an id
once: a retry after a timeout whose batch had landed is a no-op). Sums recorded meanwhile
wait in memory, merged, and go in the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

# Still read from here by control/rollout/gates.py (owned by the statistics work, issue 27 §3)
# until it imports it from config.metrics_catalogue.
from abgate.config.metrics_catalogue import ERROR_METRIC, LATENCY_METRIC, SLOW_METRIC
from abgate.config.model import MetricConfig
from abgate.proxy.hashing import KEYED, USER_SHIFT
from abgate.proxy.jsonpath import MISSING, extract
from abgate.state.errors import StoreUnavailable
from abgate.state.measurements import (
    CLUSTERS,
    MAX_VALUE,
    UNCLUSTERED,
    USER_MAP_BITS,
    MeasureKey,
    MeasurementStore,
    Phase,
    Sums,
    UsersKey,
)

CLUSTER_MASK = CLUSTERS - 1
NEW_USERS_LIMIT = 100_000  # new users per arm between two flushes (about 3.6 MB at most)
USER_INDEX_SHIFT = 32 - USER_MAP_BITS.bit_length() + 1  # the top bits of a 32-bit hash

log = logging.getLogger("abgate.measure")
FLUSH_INTERVAL = 1.0


class PhaseTag(NamedTuple):
    """One phase as a request carries it from its decision to its record: the id (the flag
    version), and its X-ABGate-Phase value and header field, made once per phase."""

    id: int
    label: str
    field: bytes


class PhaseRef:
    """An experiment's current phase, shared by its destinations. A request takes `tag` when
    its arm is chosen, and is counted and labelled in that phase even if the percentage
    changes while it is in flight."""

    __slots__ = ("id", "tag")

    def __init__(self, phase: int) -> None:
        self.move(phase)

    def move(self, phase: int) -> None:
        self.id = phase
        self.tag = PhaseTag(phase, str(phase), f"X-ABGate-Phase: {phase}\r\n".encode())


class Measurements:
    def __init__(self) -> None:
        self._pending: dict[MeasureKey, Sums] = {}
        # The batch sent and not confirmed (its id, its sums): sent again, unchanged, first.
        self._unconfirmed: tuple[str, dict[MeasureKey, Sums]] | None = None
        # ids: this process's random prefix and a count (not a generator expression over
        # an infinite count: mypyc compiles that into a list, and the compiled data plane
        # never started)
        self._batch_prefix = os.urandom(6).hex()
        self._batch_count = itertools.count(1)
        self._phases: list[tuple[str, Phase]] = []
        # Distinct users: each arm's bitmap of the current phase (to send a user's bit once
        # per phase, not once per request) and the bits first seen since the last flush.
        self._seen: dict[tuple[str, str], tuple[int, bytearray]] = {}
        self._new_users: dict[UsersKey, list[int]] = {}
        self.generation = 0
        self.flush_failures = 0  # exported as abgate_measurement_flush_failures_total

    def users(
        self, experiment: str, phase: int, arm: str, *, keep_seen: bool = False
    ) -> tuple[bytearray, list[int]]:
        """The arm's seen-users bitmap for `phase` (a fresh one when the phase moved: 128
        KiB per arm, the old phase's dropped) and the list its new bits go to. With
        `keep_seen` (a late request of an earlier phase) the current bitmap stays."""
        seen = self._seen.get((experiment, arm))
        if keep_seen and (seen is None or seen[0] != phase):
            return bytearray(), self._new_users.setdefault((experiment, phase, arm), [])
        if seen is None or seen[0] != phase:
            seen = self._seen[(experiment, arm)] = (phase, bytearray(USER_MAP_BITS // 8))
        new = self._new_users.setdefault((experiment, phase, arm), [])
        return seen[1], new

    def sums(self, key: MeasureKey) -> Sums:
        sums = self._pending.get(key)
        if sums is None:
            sums = self._pending[key] = Sums()
        return sums

    def phase_started(self, experiment: str, phase: Phase) -> None:
        self._phases.append((experiment, phase))

    def drain(
        self,
    ) -> tuple[dict[MeasureKey, Sums], list[tuple[str, Phase]], dict[UsersKey, list[int]]]:
        batch, self._pending = self._pending, {}
        phases, self._phases = self._phases, []
        users, self._new_users = self._new_users, {}
        self.generation += 1
        return batch, phases, {key: bits for key, bits in users.items() if bits}

    async def flush(self, store: MeasurementStore) -> None:
        batch, phases, users = self.drain()
        if self._unconfirmed is None:
            if batch:
                batch_id = f"{self._batch_prefix}-{next(self._batch_count)}"
                self._unconfirmed = (batch_id, batch)
        else:  # behind the batch not yet confirmed: never sent, so merging it is safe
            self._merge(batch)
        try:
            for experiment, phase in phases:
                await store.start_phase(experiment, phase)
            if self._unconfirmed is not None:
                batch_id, sums = self._unconfirmed
                await store.add(sums, batch_id)
                self._unconfirmed = None
        except StoreUnavailable as exc:
            # Keep everything for the next flush: measurements are deltas, never lost; the
            # unconfirmed batch goes again as it is (it may have landed: same id, no-op).
            self._failed(exc)
            self._phases[:0] = phases
            self._keep_users(users)
            return
        if users:
            try:
                await store.add_users(users)
            except StoreUnavailable as exc:
                self._failed(exc)
                self._keep_users(users)

    def _failed(self, exc: StoreUnavailable) -> None:
        self.flush_failures += 1
        log.debug("measurement flush failed, kept for the next one: %s", exc)

    def _merge(self, batch: dict[MeasureKey, Sums]) -> None:
        for key, sums in batch.items():
            self.sums(key).merge(sums)

    def _keep_users(self, users: dict[UsersKey, list[int]]) -> None:
        for key, bits in users.items():
            self._new_users.setdefault(key, []).extend(bits)

    async def run_forever(self, store: MeasurementStore) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.flush(store)


class ArmRecorder:
    """The sums one experiment arm writes to, per cluster of users (the low bits of the
    request's user hash), refetched when the phase or batch changes.

    With a latency SLO (`slow_over`, seconds), each answer also counts as 0 or 1 in
    `SLOW_METRIC`: "p95 at most 100 ms" is then a test on the share of answers over 100 ms."""

    __slots__ = (
        "_arm",
        "_cluster",
        "_errors",
        "_experiment",
        "_generation",
        "_late_phase",
        "_latency",
        "_measurements",
        "_new_users",
        "_phase",
        "_phase_ref",
        "_seen_users",
        "_slow",
        "_slow_over",
    )

    def __init__(
        self,
        measurements: Measurements,
        experiment: str,
        arm: str,
        phase: PhaseRef,
        slow_over: float | None = None,
    ) -> None:
        self._measurements = measurements
        self._experiment = experiment
        self._arm = arm
        self._phase_ref = phase
        self._phase = -1
        self._generation = -1
        # Index CLUSTERS (= UNCLUSTERED, -1, as a list index) holds requests with no user.
        self._latency: list[Sums | None] = []
        self._errors: list[Sums | None] = []
        self._slow: list[Sums | None] = []
        self._slow_over = slow_over
        self._seen_users = bytearray()
        self._new_users: list[int] = []
        self._cluster = UNCLUSTERED  # of the answer just recorded, for its extra metrics
        self._late_phase: int | None = None  # ... and its phase, when not the current one

    def _sums(self, cache: list[Sums | None], metric: str, cluster: int) -> Sums:
        sums = self._measurements.sums((self._experiment, self._phase, self._arm, metric, cluster))
        cache[cluster] = sums
        return sums

    def record(
        self, status: int, upstream_seconds: float | None, draw: int, phase: int | None = None
    ) -> None:
        """One answer of this arm; `draw` is the split's (proxy/hashing.py): it says the
        request's user, if any; `phase` the phase its arm was chosen in (default: now)."""
        measurements = self._measurements
        if phase is not None and phase != self._phase_ref.id:
            self._record_late(status, upstream_seconds, draw, phase)
            return
        if self._phase_ref.id != self._phase or measurements.generation != self._generation:
            self._phase, self._generation = self._phase_ref.id, measurements.generation
            self._latency = [None] * (CLUSTERS + 1)
            self._errors = [None] * (CLUSTERS + 1)
            self._slow = [None] * (CLUSTERS + 1)
            self._seen_users, self._new_users = measurements.users(
                self._experiment, self._phase, self._arm
            )
        if draw > 0 and draw & KEYED:
            user = draw >> USER_SHIFT
            cluster = user & CLUSTER_MASK
            index = user >> USER_INDEX_SHIFT  # a user's bit: its hash's top bits
            byte, bit = index >> 3, 1 << (index & 7)
            # Bounded between flushes (a data plane without a store to flush to never
            # drains): past the limit a user's bit waits for one of its later requests.
            if not self._seen_users[byte] & bit and len(self._new_users) < NEW_USERS_LIMIT:
                self._seen_users[byte] |= bit
                self._new_users.append(index)
        else:
            cluster = UNCLUSTERED
        self._cluster, self._late_phase = cluster, None
        # Inlined Sums.add: this runs on every request.
        errors = self._errors[cluster] or self._sums(self._errors, ERROR_METRIC, cluster)
        errors.count += 1
        if status >= 500:
            errors.total += 1.0
            errors.total_sq += 1.0
        elif upstream_seconds is not None:
            latency = self._latency[cluster] or self._sums(self._latency, LATENCY_METRIC, cluster)
            latency.count += 1
            latency.total += upstream_seconds
            latency.total_sq += upstream_seconds * upstream_seconds
            if self._slow_over is not None:
                slow = self._slow[cluster] or self._sums(self._slow, SLOW_METRIC, cluster)
                slow.count += 1
                if upstream_seconds > self._slow_over:
                    slow.total += 1.0
                    slow.total_sq += 1.0

    def _record_late(
        self, status: int, upstream_seconds: float | None, draw: int, phase: int
    ) -> None:
        """A request decided in an earlier phase and answered after the percentage changed:
        counted in its decision's phase (no cache: this happens around a change only)."""
        keyed = draw > 0 and draw & KEYED
        user = draw >> USER_SHIFT if keyed else 0
        cluster = user & CLUSTER_MASK if keyed else UNCLUSTERED
        self._late_phase, self._cluster = phase, cluster
        measurements, base = self._measurements, (self._experiment, phase, self._arm)
        if keyed:
            _, new = measurements.users(self._experiment, phase, self._arm, keep_seen=True)
            if len(new) < NEW_USERS_LIMIT:
                new.append(user >> USER_INDEX_SHIFT)  # deduplicated by the store's bitmap
        measurements.sums((*base, ERROR_METRIC, cluster)).add(1.0 if status >= 500 else 0.0)
        if status < 500 and upstream_seconds is not None:
            measurements.sums((*base, LATENCY_METRIC, cluster)).add(upstream_seconds)
            if self._slow_over is not None:
                slow = 1.0 if upstream_seconds > self._slow_over else 0.0
                measurements.sums((*base, SLOW_METRIC, cluster)).add(slow)

    def add(self, metric: str, value: float) -> None:
        """An extra metric of the answer just recorded (its phase and cluster)."""
        phase = self._phase if self._late_phase is None else self._late_phase
        key = (self._experiment, phase, self._arm, metric, self._cluster)
        self._measurements.sums(key).add(value)


class MetricExtractor:
    """An experiment's extra metrics, read from each answer of its arms: JSON fields (the body
    is parsed only when one is configured) and numeric response headers."""

    __slots__ = ("_headers", "_json")

    def __init__(self, metrics: tuple[MetricConfig, ...]) -> None:
        self._json = tuple(
            (m.name, m.json_path, m.type == "binary") for m in metrics if m.json_path is not None
        )
        self._headers = tuple(
            (m.name, m.header.lower().encode("latin-1"), m.type == "binary")
            for m in metrics
            if m.header is not None
        )

    def values(
        self, body: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[tuple[str, float], ...]:
        """The usable values in one answer; `headers` as the upstream sent them."""
        found: list[tuple[str, float]] = []
        if self._json:
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError:
                document = MISSING
            if document is not MISSING:
                for name, path, binary in self._json:
                    _add(found, name, extract(document, path), binary)
        for name, wanted, binary in self._headers:
            for header, raw in headers:
                if header.lower() == wanted:
                    with contextlib.suppress(ValueError):
                        _add(found, name, float(raw), binary)
                    break
        return tuple(found)


def _add(found: list[tuple[str, float]], name: str, value: Any, binary: bool) -> None:
    """A usable value only: finite and small enough to square (state.measurements
    .check_value), and 0 or 1 for a binary metric (anything else would corrupt its rate);
    others are skipped."""
    usable = isinstance(value, bool) or (
        isinstance(value, int | float) and math.isfinite(value) and abs(value) <= MAX_VALUE
    )
    if usable and (not binary or value in (0, 1)):
        found.append((name, float(value)))
