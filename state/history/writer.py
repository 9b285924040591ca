"""The history writer: bounded in-memory buffers, flushed to PostgreSQL once a second by an
owned task, decisions in one binary COPY per flush.

The request path only appends a tuple to a list (see proxy/history_sink.py); when the
buffer is full the record is dropped and counted (abgate_history_dropped_total), never
waited for. PostgreSQL down or slow: batches that failed are kept for the next flush up to
the same bound, the failure is logged once and shown in /health/aggregate, and the writer
reconnects with backoff. Each proxy process writes its own decisions directly (no hop
through the control plane: one COPY per process per second is cheap for PostgreSQL, and
the control plane stays off the data path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from state.histogram import Histogram
from state.history.schema import maintain, migrate

log = logging.getLogger("abgate.history")
FLUSH_INTERVAL = 1.0
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MAINTENANCE_INTERVAL = 3600.0
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
DECISION_COLUMNS = (
    "time",
    "request_id",
    "experiment",
    "phase",
    "arm",
    "bucket",
    "upstream",
    "status",
    "upstream_seconds",
    "error",
    "fallback",
    "instance",
)
# A decision as the sink records it: time.time() first, the instance added at flush.
DecisionRow = tuple[
    float, str, str, int, str, int | None, str, int, float | None, str | None, str | None
]
_STATEMENTS = {
    "outcomes": "INSERT INTO ab_testing.outcomes (time, request_id, experiment, arm, phase, "
    "metric, value, reported_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    "rollout_events": "INSERT INTO ab_testing.rollout_events (time, experiment, state, "
    "transition, change, decision, reason, inputs, actor) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9)",
    "flag_changes": "INSERT INTO ab_testing.flag_changes (time, flag, percentage, version, "
    "phase, actor, reason) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    "cohorts": "INSERT INTO ab_testing.cohorts (experiment, phase, arm, percentage, "
    "started_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    "cohort_ends": "UPDATE ab_testing.cohorts SET ended_at = $3 WHERE experiment = $1 "
    "AND phase <> $2 AND ended_at IS NULL",
    "experiments": "INSERT INTO ab_testing.experiments (name, config_hash) VALUES ($1, $2) "
    "ON CONFLICT (name) DO UPDATE SET config_hash = EXCLUDED.config_hash, "
    "updated_at = now()",
}


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class HistoryWriter:
    def __init__(
        self,
        url: str,
        *,
        instance: str,
        capacity: int,
        retention_days: int,
        maintenance: bool = False,
        migrate_schema: bool = True,
        clock_day: Callable[[], date] | None = None,
    ) -> None:
        self.url = url
        self.instance = instance
        self.capacity = capacity
        self.retention_days = retention_days
        self.maintenance = maintenance  # this process drops partitions past the retention
        self.migrate_schema = migrate_schema
        self.clock_day = clock_day
        self._decisions: list[DecisionRow] = []
        self._rows: list[tuple[str, tuple[Any, ...]]] = []  # (statement, args): small tables
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # one operation at a time on the connection (never a request's)
        self._migrated = False
        self._maintained_at = 0.0
        self.dropped = 0
        self.written = 0
        self.failures = 0
        self.last_error: str | None = None
        self.layout: str | None = None
        # Flush durations (one COPY and the small rows), for abgate_history_write_seconds.
        self.writes = Histogram(WRITE_BUCKETS)  # seconds per flush
        # Writers of other processes whose decisions this one looks up (`abgate run`'s data
        # plane, over its channel): flushed first too. Best effort: one that is away is not.
        self.flush_first: list[Callable[[], Awaitable[object]]] = []

    # -- in memory, from the request path and the control plane ----------------------------

    def add_decision(self, row: DecisionRow) -> None:
        if len(self._decisions) >= self.capacity:
            self.dropped += 1
            return
        self._decisions.append(row)

    def add(self, table: str, *args: Any) -> None:
        """A row of a small table (outcomes, rollout events, flag changes, cohorts)."""
        if len(self._rows) >= self.capacity:
            self.dropped += 1
            return
        self._rows.append((_STATEMENTS[table], args))

    @property
    def buffered(self) -> int:
        return len(self._decisions) + len(self._rows)

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    # -- the owned task --------------------------------------------------------------------

    async def run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                await self.flush()
                backoff = BACKOFF_FIRST
                await asyncio.sleep(FLUSH_INTERVAL)
            except Exception as exc:  # the loop outlives any error: drop the connection, retry
                self._failed(exc)
                await self._close_connection()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        error = f"{type(exc).__name__}: {exc}"
        if error != self.last_error:
            expected = isinstance(
                exc, OSError | asyncpg.PostgresError | asyncpg.InterfaceError | TimeoutError
            )
            log.warning(
                "history store: %s (buffering up to %d records)",
                error,
                self.capacity,
                exc_info=None if expected else exc,
            )
        self.last_error = error

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.url, timeout=5, command_timeout=30)
            if self.last_error is not None:
                log.info("history store: connected again")
        conn = self._conn
        if not self._migrated:
            if self.migrate_schema:
                self.layout = await migrate(conn, self.retention_days, self._today())
            self._migrated = True
            self._maintained_at = time.monotonic()
        elif self.maintenance and time.monotonic() - self._maintained_at > MAINTENANCE_INTERVAL:
            await maintain(conn, self.retention_days, self._today())
            self._maintained_at = time.monotonic()
        return conn

    def _today(self) -> date | None:
        return self.clock_day() if self.clock_day is not None else None

    async def flush(self) -> None:
        """Write what is buffered; on failure keep it (bounded) and raise."""
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        if not self._decisions and not self._rows and self._migrated:
            return
        decisions, self._decisions = self._decisions, []
        rows, self._rows = self._rows, []
        started = time.perf_counter()
        try:
            conn = await self._connection()
            if decisions:
                instance = self.instance
                await conn.copy_records_to_table(
                    "decisions",
                    schema_name="ab_testing",
                    columns=DECISION_COLUMNS,
                    records=_in_slices(decisions, instance),
                )
            for statement, args in rows:
                await conn.execute(statement, *args)
        except BaseException:
            self._restore(decisions, rows)
            raise
        self.written += len(decisions) + len(rows)
        self.last_error = None
        if decisions or rows:
            self.writes.observe(time.perf_counter() - started)

    def _restore(
        self, decisions: Sequence[DecisionRow], rows: Sequence[tuple[str, tuple[Any, ...]]]
    ) -> None:
        """Put a failed batch back in front, dropping (and counting) what exceeds the bound."""
        self._decisions[:0] = self._bounded(decisions, len(self._decisions))
        self._rows[:0] = self._bounded(rows, len(self._rows))

    def _bounded(self, batch: Sequence[Any], held: int) -> list[Any]:
        """The newest part of `batch` that fits beside `held` records; the rest is counted."""
        room = max(0, self.capacity - held)
        cut = max(0, len(batch) - room)
        self.dropped += cut
        return list(batch[cut:])

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def aclose(self, grace: float = 5.0) -> None:
        """The last flush, within `grace` seconds; what cannot be written is counted."""
        try:
            async with asyncio.timeout(grace):
                await self.flush()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self._failed(exc)
            self.dropped += self.buffered
            self._decisions, self._rows = [], []
        await self._close_connection()

    # -- reads (control plane) -------------------------------------------------------------

    async def decision_of(self, request_id: str) -> tuple[str, str, int, datetime] | None:
        """(experiment, arm, phase, time) of a recorded decision; flushes first, so a
        decision this process made a moment ago is found too."""
        for flush in self.flush_first:
            with contextlib.suppress(Exception):  # away or failing: look up what is written
                await flush()
        async with self._lock:
            await self._flush()
            conn = await self._connection()
            row = await conn.fetchrow(
                "SELECT experiment, arm, phase, time FROM ab_testing.decisions "
                "WHERE request_id = $1 ORDER BY time DESC LIMIT 1",
                request_id,
            )
        if row is None:
            return None
        return row["experiment"], row["arm"], row["phase"], row["time"]


SLICE = 100  # records encoded between two returns to the event loop


async def _in_slices(
    decisions: Sequence[DecisionRow], instance: str
) -> AsyncIterator[tuple[Any, ...]]:
    """The COPY's rows, handing the event loop back every SLICE rows (asyncpg encodes them as
    they come). A second's worth of decisions (10,000 at 10,000 req/s) built at once held
    the requests sharing the loop for milliseconds: p99 at one connection was 2.3 ms with
    history on, 1.1 ms with slices of 100 (0.9 ms with history off)."""
    for start in range(0, len(decisions), SLICE):
        for r in decisions[start : start + SLICE]:
            yield (utc(r[0]), *r[1:], instance)
        await asyncio.sleep(0)
