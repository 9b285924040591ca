"""The history writer: bounded in-memory buffers, flushed to PostgreSQL once a second by an
owned task, each flush one transaction that stores every record exactly once
(state/history/flush.py).

The request path only appends a tuple to a list (see proxy/history_sink.py); when the
buffer is full the record is dropped and counted (abgate_history_dropped_total), never
waited for. PostgreSQL down or slow: what was not committed is kept for the next flush up to
the same bound, the failure is logged once and shown in /health/aggregate, and the writer
reconnects with backoff. A record PostgreSQL refuses is set aside in ab_testing.dead_letters
(abgate_history_dead_letters_total, logged once per cause) and never holds back the rest.
Each proxy process writes its own decisions directly (no hop through the control plane: one
flush per process per second is cheap for PostgreSQL, and the control plane stays off the
data path).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from abgate.config.metrics_catalogue import HISTORY_WRITE_BUCKETS
from abgate.state.histogram import Histogram
from abgate.state.history.flush import Chunk, Flush, SmallRow
from abgate.state.history.rows import IDENTIFIED, REQUEST_ID_MAX, STATEMENTS, DecisionRow, safe_text
from abgate.state.history.schema import maintain, migrate

log = logging.getLogger("abgate.history")
FLUSH_INTERVAL = 1.0
MAINTENANCE_INTERVAL = 3600.0
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
# What a flush can meet that is the store's fault, not abgate's: logged without a traceback.
STORE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


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
        password: Callable[[], str] | None = None,
    ) -> None:
        self.url = url
        self.password = password  # called at each new connection (a rotated file is read)
        self.instance = instance
        self.capacity = capacity
        self.retention_days = retention_days
        self.maintenance = maintenance  # this process drops partitions past the retention
        self.migrate_schema = migrate_schema
        self.clock_day = clock_day
        self._decisions: list[DecisionRow] = []
        self._rows: list[SmallRow] = []  # (table, arguments): the small tables
        self._sequence = itertools.count(1)  # record ids: instance:sequence
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # one operation at a time on the connection (never a request's)
        self._migrated = False
        self._maintained_at = 0.0
        self.dropped = 0
        self.written = 0  # records stored (a retried record counts once)
        self.duplicates = 0  # decisions a retried flush found stored already
        self.dead_letters = 0  # records PostgreSQL refused, set aside
        self.failures = 0
        self.last_error: str | None = None
        self._dead_causes: set[tuple[str, str]] = set()  # (table, kind): logged once each
        self.layout: str | None = None
        # Flush durations (one transaction), for abgate_history_write_seconds.
        self.writes = Histogram(HISTORY_WRITE_BUCKETS)  # seconds per flush
        # Each statement of a flush (the COPY, each run of small rows), as the client sees
        # it: abgate_history_query_seconds, the requirements' postgresql_queries_duration_p95.
        self.queries = Histogram(HISTORY_WRITE_BUCKETS)
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
        """A row of a small table (outcomes, rollout events, flag changes, cohorts); values
        for a jsonb column are wrapped in `rows.Json`."""
        if table not in STATEMENTS:
            raise ValueError(f"unknown history table {table!r}")
        if len(self._rows) >= self.capacity:
            self.dropped += 1
            return
        if table in IDENTIFIED:  # its identity, kept across retries of its flush
            args = (*args, f"{self.instance}:{next(self._sequence)}")
        self._rows.append((table, args))

    @property
    def buffered(self) -> int:
        return len(self._decisions) + len(self._rows)

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    # -- the owned task --------------------------------------------------------------------

    async def run(self) -> None:
        backoff = BACKOFF_FIRST
        try:
            while True:
                try:
                    await self.flush()
                    backoff = BACKOFF_FIRST
                    await asyncio.sleep(FLUSH_INTERVAL)
                except Exception as exc:  # the loop outlives any error: drop the connection
                    self._failed(exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            # Cancelled mid-flush, the connection may be mid-protocol: the last flush
            # (aclose) starts on a new one.
            await self._close_connection()

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        error = f"{type(exc).__name__}: {exc}"
        if error != self.last_error:
            log.warning(
                "history store: %s (buffering up to %d records)",
                error,
                self.capacity,
                exc_info=None if isinstance(exc, STORE_ERRORS) else exc,
            )
        self.last_error = error

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self.url, timeout=5, command_timeout=30, password=self.password
            )
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
        """Write what is buffered; on failure keep what was not committed (bounded), raise."""
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        if not self._decisions and not self._rows and self._migrated:
            return
        batch = Chunk(self._decisions, self._rows)
        self._decisions, self._rows = [], []
        started = time.perf_counter()
        work = Flush(self.instance, utc, queries=self.queries)
        try:
            conn = await self._connection()
            await work.run(conn, batch)
        except BaseException:
            left = work.remaining() if work.pending else batch
            self._restore(left.decisions, left.rows)
            await self._close_connection()  # whatever broke, the next try starts afresh
            raise
        finally:
            self._count(work)
        self.last_error = None
        if batch:
            self.writes.observe(time.perf_counter() - started)

    def _count(self, work: Flush) -> None:
        self.written += work.stored
        self.duplicates += work.duplicates
        self.dead_letters += len(work.dead)
        self.dropped += work.lost
        for table, kind, error in work.dead:
            if (table, kind) not in self._dead_causes:  # once per cause, not per record
                self._dead_causes.add((table, kind))
                log.error(
                    "history store: PostgreSQL refused a record for %s (%s); set aside in "
                    "ab_testing.dead_letters, the rest of its batch written",
                    table,
                    error,
                )
        if work.lost:
            log.error(
                "history store: %d refused record(s) could not be set aside either: dropped",
                work.lost,
            )

    def _restore(self, decisions: Sequence[DecisionRow], rows: Sequence[SmallRow]) -> None:
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
        """The last flush, within `grace` seconds; what cannot be written is counted and
        logged with its number (records lost at shutdown are never silent)."""
        try:
            async with asyncio.timeout(grace):
                await self.flush()
        except STORE_ERRORS as exc:
            self._failed(exc)
            lost = self.buffered
            self.dropped += lost
            self._decisions, self._rows = [], []
            log.error(
                "history store: %d record(s) dropped at shutdown, not written within %gs (%s: %s)",
                lost,
                grace,
                type(exc).__name__,
                exc,
            )
        await self._close_connection()

    # -- reads (control plane) -------------------------------------------------------------

    async def read(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """A read of what is written (this writer's buffer flushed first): the control
        process's own records, such as its timeline when it starts."""
        async with self._lock:
            await self._flush()
            conn = await self._connection()
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows

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
                safe_text(request_id, REQUEST_ID_MAX),  # as its decision was stored
            )
        if row is None:
            return None
        return row["experiment"], row["arm"], row["phase"], row["time"]
