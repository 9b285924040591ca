"""Schema migrations and day partitions of the history store.

One code path decides the layout: with the timescaledb extension available, decisions and
outcomes are hypertables with a retention policy (TimescaleDB drops old chunks itself);
without it, they are tables partitioned by day, and `maintain` creates the days ahead and
drops those past the retention (run by the control process every hour).
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg

log = logging.getLogger("abgate.history")
SQL_DIR = Path(
    os.environ.get("ABGATE_SQL_DIR", Path(__file__).resolve().parents[2] / "scripts" / "sql")
)
VERSION = 3
PARTITIONED = ("decisions", "outcomes")
DAYS_AHEAD = 3


async def has_timescaledb(conn: asyncpg.Connection) -> bool:
    return bool(
        await conn.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    )


async def migrate(conn: asyncpg.Connection, retention_days: int, today: date | None = None) -> str:
    """Bring the schema to VERSION (idempotent); returns the layout: timescaledb or
    partitions. Runs under an advisory lock, so concurrent processes migrate once."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('abgate-history-migrate'))")
        timescale = await has_timescaledb(conn)
        if timescale:
            text = (SQL_DIR / "ab-testing-timescaledb.sql").read_text()
            await conn.execute(text.replace(":retention_days", str(int(retention_days))))
        await conn.execute((SQL_DIR / "ab-testing-schema.sql").read_text())
    if timescale:
        return "timescaledb"
    await maintain(conn, retention_days, today)
    return "partitions"


def _partition(table: str, day: date) -> str:
    return f"{table}_{day:%Y%m%d}"


async def partitions(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent
           JOIN pg_namespace n ON n.oid = p.relnamespace
           WHERE n.nspname = 'ab_testing' AND p.relname = $1 ORDER BY c.relname""",
        table,
    )
    return [row["relname"] for row in rows]


async def maintain(
    conn: asyncpg.Connection, retention_days: int, today: date | None = None
) -> tuple[list[str], list[str]]:
    """Create the day partitions from `retention_days` ago (at most) to DAYS_AHEAD ahead;
    drop the ones wholly older than the retention. Returns (created, dropped)."""
    today = today or datetime.now(UTC).date()
    oldest = today - timedelta(days=retention_days)
    created: list[str] = []
    dropped: list[str] = []
    for table in PARTITIONED:
        kind = await conn.fetchval(
            "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'ab_testing' AND c.relname = $1",
            table,
        )
        if kind != "p":  # a hypertable: TimescaleDB keeps its own chunks
            continue
        existing = set(await partitions(conn, table))
        for offset in range(-1, DAYS_AHEAD + 1):
            day = today + timedelta(days=offset)
            name = _partition(table, day)
            if name in existing:
                continue
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS ab_testing.{name} PARTITION OF "
                f"ab_testing.{table} FOR VALUES FROM ('{day.isoformat()}') "
                f"TO ('{(day + timedelta(days=1)).isoformat()}')"
            )
            created.append(name)
        for name in sorted(existing):
            day = datetime.strptime(name.rsplit("_", 1)[1], "%Y%m%d").date()
            if day + timedelta(days=1) <= oldest:
                await conn.execute(f"DROP TABLE IF EXISTS ab_testing.{name}")
                dropped.append(name)
    if dropped:
        log.info("history: dropped partitions past the retention: %s", ", ".join(dropped))
    return created, dropped
