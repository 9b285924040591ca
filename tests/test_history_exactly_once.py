"""The history store stores every record exactly once, on a real PostgreSQL: a poison row is
set aside instead of failing its batch, a retried flush adds nothing twice (a connection
killed between the COPY and the commit included), and records lost at shutdown are said."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientSession

from abgate.control.serve import embedded
from abgate.state.history.flush import Chunk, Flush
from abgate.state.history.rows import Json, safe_text
from abgate.state.history.schema import migrate
from abgate.state.history.writer import HistoryWriter, utc
from tests.cut_proxy import cut_proxy
from tests.postgres_server import PostgresServer, postgres_server
from tests.test_history import decide, history_config

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def postgres() -> AsyncIterator[PostgresServer]:
    async with postgres_server() as server:
        yield server


def decision(i: int, request_id: str | None = None, **changes: Any) -> tuple[Any, ...]:
    row: dict[str, Any] = {
        "time": 1_800_000_000.0 + i / 1000,
        "request_id": request_id if request_id is not None else f"req-{i}",
        "experiment": "exp",
        "phase": 1,
        "arm": "treatment" if i % 2 else "control",
        "bucket": i % 10_000,
        "upstream": "ml",
        "status": 200,
        "seconds": 0.001,
        "error": None,
        "fallback": None,
    }
    row.update(changes)
    return tuple(row.values())


def new_writer(postgres: PostgresServer, **options: Any) -> HistoryWriter:
    now = datetime.fromtimestamp(1_800_000_000, UTC).date()
    return HistoryWriter(
        postgres.url,
        instance="writer-1",
        capacity=options.pop("capacity", 100_000),
        retention_days=30,
        clock_day=lambda: now,
        **options,
    )


async def fetch(postgres: PostgresServer, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await postgres.connect()
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def test_text_postgresql_would_refuse_is_made_safe_and_stored(
    postgres: PostgresServer,
) -> None:
    writer = new_writer(postgres)
    ids = ["\udcff\udcfe", "nul\x00inside", "\ud800lone", "ÿþ", "x" * 5000, "plain"]
    for i, request_id in enumerate(ids):
        writer.add_decision(decision(i, request_id))
    writer.add("flag_changes", utc(1_800_000_000), "exp", 25.0, 2, 2, "ops", "why\x00not")
    writer.add(
        "rollout_events",
        utc(1_800_000_000),
        "exp",
        "running",
        None,
        None,
        "hold",
        "r\udcff",
        Json({"note": "a\x00b", "\ud800": [float("inf"), "\udcfe"]}),
        "ops",
    )
    await writer.flush()
    await writer.aclose()
    rows = await fetch(postgres, "SELECT request_id FROM ab_testing.decisions ORDER BY time")
    assert [r["request_id"] for r in rows] == [
        "\\xff\\xfe",
        "nul\\x00inside",
        "\\ud800lone",
        "ÿþ",
        "x" * 200,
        "plain",
    ]
    [change] = await fetch(postgres, "SELECT reason FROM ab_testing.flag_changes")
    assert change["reason"] == "why\\x00not"
    [event] = await fetch(postgres, "SELECT reason, inputs FROM ab_testing.rollout_events")
    assert event["reason"] == "r\\xff"
    assert event["inputs"] == '{"note": "a\\\\x00b", "\\\\ud800": [null, "\\\\xfe"]}'
    assert (writer.written, writer.dead_letters, writer.dropped) == (8, 0, 0)
    # A decision is found by the request id it was recorded under, made safe the same way.
    assert safe_text("\udcff\udcfe") == "\\xff\\xfe"


async def test_a_row_postgresql_refuses_is_set_aside_and_the_rest_is_written(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    writer = new_writer(postgres)
    poison: dict[int, dict[str, Any]] = {
        137: {"phase": 2**31},  # out of integer range: refused by the driver
        501: {"time": 4_102_444_800.0},  # 2100-01-01: no partition takes it (PostgreSQL)
        502: {"time": 4_102_444_801.0},
    }
    for i in range(1000):
        writer.add_decision(decision(i, **poison.get(i, {})))
    writer.add("flag_changes", utc(1_800_000_000), "exp", 25.0, 2**40, 2, "ops", "v too big")
    writer.add("flag_changes", utc(1_800_000_000), "exp", 25.0, 3, 3, "ops", "fine")
    with caplog.at_level(logging.ERROR, logger="abgate.history"):
        await writer.flush()
        await writer.flush()  # nothing left to retry
    stored = await fetch(postgres, "SELECT request_id FROM ab_testing.decisions")
    assert len(stored) == 997
    assert {r["request_id"] for r in stored} == {f"req-{i}" for i in range(1000)} - {
        f"req-{i}" for i in poison
    }
    dead = await fetch(postgres, "SELECT target, error, record FROM ab_testing.dead_letters")
    assert sorted(r["target"] for r in dead) == ["decisions"] * 3 + ["flag_changes"]
    assert any("req-137" in r["record"] and "int32" in r["error"] for r in dead)
    assert any("req-501" in r["record"] and "partition" in r["error"] for r in dead)
    [(version,)] = await fetch(postgres, "SELECT version FROM ab_testing.flag_changes")
    assert version == 3
    assert (writer.dead_letters, writer.written, writer.buffered) == (4, 998, 0)
    refusals = [r for r in caplog.records if "set aside" in r.getMessage()]
    assert len(refusals) == 3  # once per (table, kind): not once per record
    await writer.aclose()


async def test_a_retried_flush_adds_nothing_twice(postgres: PostgresServer) -> None:
    writer = new_writer(postgres)
    await writer.flush()  # the schema
    conn = await postgres.connect()
    try:
        rows = [decision(i) for i in range(300)]
        small: list[tuple[str, tuple[Any, ...]]] = [
            ("flag_changes", (utc(1_800_000_000), "exp", 25.0, 2, 2, "ops", "once")),
            ("outcomes", (utc(1_800_000_000), "req-1", "exp", "a", 1, "m", 1.0, utc(1), "w:1")),
        ]
        first, again = Flush("writer-1", utc), Flush("writer-1", utc)
        await first.run(conn, Chunk([*rows, rows[7]], small))  # one request id twice
        await again.run(conn, Chunk(rows, small))  # as after a commit that landed unseen
    finally:
        await conn.close()
    await writer.aclose()
    assert (first.stored, first.duplicates) == (303, 1)
    assert (again.stored, again.duplicates) == (302, 300)
    [(decisions,)] = await fetch(postgres, "SELECT count(*) FROM ab_testing.decisions")
    [(outcomes,)] = await fetch(postgres, "SELECT count(*) FROM ab_testing.outcomes")
    assert (decisions, outcomes) == (300, 1)


LOCK = 424242
HOLD_AT_COMMIT = f"""
CREATE FUNCTION ab_testing.hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock({LOCK}); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON ab_testing.decisions
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ab_testing.hold_commit();
"""


async def kill_at_commit(postgres: PostgresServer, writer: HistoryWriter, records: int) -> None:
    """`records` decisions and a flag change through the writer's own loop, its backend
    killed while the COMMIT waits on a lock held here (a deferred trigger runs at commit,
    after the COPY); then the loop retries until all is written."""
    await writer.flush()
    admin = await postgres.connect()
    try:
        await admin.execute(HOLD_AT_COMMIT)
        await admin.execute(f"SELECT pg_advisory_lock({LOCK})")
        for i in range(records):
            writer.add_decision(decision(i))
        writer.add("flag_changes", utc(1_800_000_000), "exp", 25.0, 2, 2, "ops", "held")
        task = asyncio.create_task(writer.run())
        async with asyncio.timeout(60):
            while True:  # the writer's backend waiting at COMMIT on the advisory lock
                pid = await admin.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = 'advisory' "
                    "AND query = 'COMMIT;'"
                )
                if pid is not None:
                    break
                await asyncio.sleep(0.01)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        await admin.execute("DROP TRIGGER hold_commit ON ab_testing.decisions")
        await admin.execute(f"SELECT pg_advisory_unlock({LOCK})")
        async with asyncio.timeout(60):
            while writer.written < records + 1:  # noqa: ASYNC110 (the writer's loop retries)
                await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await admin.close()
    await writer.aclose()


async def test_a_connection_killed_between_the_copy_and_the_commit_writes_once(
    postgres: PostgresServer,
) -> None:
    writer = new_writer(postgres)
    await kill_at_commit(postgres, writer, 500)
    assert writer.failures >= 1
    assert writer.last_error is None
    [(count, distinct)] = await fetch(
        postgres, "SELECT count(*), count(DISTINCT request_id) FROM ab_testing.decisions"
    )
    [(changes,)] = await fetch(postgres, "SELECT count(*) FROM ab_testing.flag_changes")
    assert (count, distinct, changes) == (500, 500, 1)


async def test_a_commit_that_landed_unseen_is_not_written_again(
    postgres: PostgresServer,
) -> None:
    """Issue 22's cause: a flush whose commit reached PostgreSQL while its answer did not
    reach the writer (the connection broke, the writer was cancelled at shutdown) is put
    back and flushed again. A forwarder between the writer and PostgreSQL passes the COMMIT
    on and drops PostgreSQL's answer: the retry stores nothing twice."""
    async with cut_proxy(postgres.port) as cut:
        url = postgres.url.replace(f":{postgres.port}/", f":{cut.port}/")
        writer = new_writer(postgres)
        writer.url = url
        await writer.flush()  # the schema, through the forwarder too
        for i in range(200):
            writer.add_decision(decision(i))
        writer.add("rollout_events", utc(1_800_000_000), "exp", "running", None, None, "hold",
                   "once", Json({"n": 1}), "ops")  # fmt: skip
        lost = cut.arm(b"COMMIT;", "reply")
        with pytest.raises((OSError, asyncpg.InterfaceError, asyncpg.PostgresError)):
            await writer.flush()
        assert lost.is_set()
        assert writer.buffered == 201  # put back: the writer cannot know it landed
        await writer.flush()
        await writer.aclose()
    assert (writer.written, writer.duplicates, writer.buffered) == (201, 200, 0)
    [(rows, distinct)] = await fetch(
        postgres, "SELECT count(*), count(DISTINCT request_id) FROM ab_testing.decisions"
    )
    [(events,)] = await fetch(postgres, "SELECT count(*) FROM ab_testing.rollout_events")
    assert (rows, distinct, events) == (200, 200, 1)


async def test_records_dropped_at_shutdown_are_logged_with_their_count(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    writer = new_writer(postgres)
    await writer.flush()
    await postgres.kill()
    for i in range(1000):
        writer.add_decision(decision(i))
    with caplog.at_level(logging.ERROR, logger="abgate.history"):
        await writer.aclose(grace=2.0)
    assert (writer.dropped, writer.buffered) == (1000, 0)
    assert any(
        "1000 record(s) dropped at shutdown" in record.getMessage() for record in caplog.records
    )


async def test_a_version_1_schema_with_duplicates_is_brought_to_version_2(
    postgres: PostgresServer,
) -> None:
    """The duplicates a retried flush left under version 1 are removed once, then the
    identity key keeps them out."""
    conn = await postgres.connect()
    try:
        today = datetime.fromtimestamp(1_800_000_000, UTC).date()
        await migrate(conn, 30, today)
        await conn.execute("DROP INDEX ab_testing.decisions_identity")
        await conn.execute("DELETE FROM ab_testing.schema_migrations WHERE version = 2")
        records = [(utc(1_800_000_000 + i // 2), f"r{i // 2}", "e", 1, "a", 1, "u", 200,
                    0.1, None, None, "w") for i in range(10)]  # fmt: skip
        await conn.copy_records_to_table("decisions", schema_name="ab_testing", records=records)
        await migrate(conn, 30, today)
        assert await conn.fetchval("SELECT count(*) FROM ab_testing.decisions") == 5
        versions = await conn.fetch(
            "SELECT version FROM ab_testing.schema_migrations ORDER BY version"
        )
        assert [r["version"] for r in versions] == [1, 2, 3]
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.copy_records_to_table(
                "decisions", schema_name="ab_testing", records=records[:1]
            )
    finally:
        await conn.close()


async def test_a_non_utf8_request_id_and_a_nul_reason_poison_nothing(
    session: ClientSession, agents: dict[str, str], postgres: PostgresServer
) -> None:
    """The issue's two reproductions end to end: a request whose X-Request-Id is not UTF-8,
    and a flag reason with a NUL (its flag_changes row used to fail the flush after the
    decisions' COPY had committed, so the decisions were copied again at every retry)."""
    config = history_config(agents, postgres)
    async with embedded(config) as running:
        writer = running.history
        assert writer is not None
        host, port = running.proxy_url.removeprefix("http://").split(":")
        reader, sender = await asyncio.open_connection(host, int(port))
        sender.write(
            b"POST /api/agent/credit/decide HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
            b"X-User-Id: raw\r\nX-Request-Id: \xff\xfe\r\nConnection: close\r\n\r\n{}"
        )
        answer = await reader.read()
        sender.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        # The id it is known by (the data plane replaces one that is not text, or keeps it).
        [echoed] = [
            line.split(b":", 1)[1].strip().decode("latin-1")
            for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            if line.lower().startswith(b"x-request-id:")
        ]
        async with session.post(
            running.control_url + "/api/flags/exp",
            headers=JSON,
            json={"percentage": 30, "reason": "nul \u0000 here"},
        ) as response:
            assert response.status == 200
        for i in range(300):
            await decide(session, running, f"user-{i}")
        await writer.flush()
        async with session.get(running.control_url + "/metrics") as response:
            exposition = await response.text()
        assert "abgate_history_dead_letters_total 0.0" in exposition
        assert "abgate_history_duplicates_total 0.0" in exposition
    rows = await fetch(postgres, "SELECT request_id FROM ab_testing.decisions")
    assert len(rows) == 301
    assert len({r["request_id"] for r in rows}) == 301
    assert echoed in {r["request_id"] for r in rows}
    reasons = await fetch(postgres, "SELECT reason FROM ab_testing.flag_changes")
    assert [r["reason"] for r in reasons] == ["nul \\x00 here"]
    assert (writer.dead_letters, writer.dropped) == (0, 0)
