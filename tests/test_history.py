"""The history store on a real PostgreSQL the tests start (plain PostgreSQL: day partitions)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from multidict import CIMultiDict

from abgate.control.serve import Embedded, embedded
from abgate.state.history.schema import maintain, migrate, partitions
from tests.postgres_server import PostgresServer, postgres_server
from tests.processes import config_document, write_config
from tests.servers import make_config

ROOT = Path(__file__).parent.parent
URL = "/api/agent/credit/decide"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def postgres() -> AsyncIterator[PostgresServer]:
    async with postgres_server() as server:
        yield server


def history_config(agents: dict[str, str], postgres: PostgresServer, **history: Any) -> Any:
    config = make_config(agents, percentage=50)
    document_history = {"postgres_url": postgres.url, **history}
    import dataclasses

    from abgate.config.model import HistorySettings

    return dataclasses.replace(config, history=HistorySettings(**document_history))


async def decide(session: ClientSession, running: Embedded, user: str) -> CIMultiDict[str]:
    async with session.post(
        running.proxy_url + URL, data=b"{}", headers={"X-User-Id": user}
    ) as response:
        await response.read()
        assert response.status == 200
        return response.headers.copy()


async def test_migrate_from_empty_twice_and_the_tables_psql_lists(postgres: PostgresServer) -> None:
    conn = await postgres.connect()
    try:
        assert await migrate(conn, 90, date(2027, 1, 10)) == "partitions"
        assert await migrate(conn, 90, date(2027, 1, 10)) == "partitions"  # idempotent
        versions = await conn.fetch(
            "SELECT version FROM ab_testing.schema_migrations ORDER BY version"
        )
        assert [row["version"] for row in versions] == [1, 2, 3]
        assert "decisions_20270110" in await partitions(conn, "decisions")
    finally:
        await conn.close()
    proc = await asyncio.create_subprocess_exec(
        "psql", postgres.url, "-c", r"\dt ab_testing.*", stdout=asyncio.subprocess.PIPE
    )
    output, _ = await proc.communicate()
    listed = output.decode()
    tables = ("experiments", "cohorts", "decisions", "outcomes", "rollout_events")
    for table in (*tables, "timeline_points", "timeline_series"):
        assert f" {table} " in listed, listed


async def test_every_request_is_one_decision_row_in_the_arm_it_was_told(
    session: ClientSession, agents: dict[str, str], postgres: PostgresServer
) -> None:
    config = history_config(agents, postgres)
    async with embedded(config) as running:
        told = {}
        for i in range(200):
            headers = await decide(session, running, f"user-{i}")
            told[headers["X-Request-Id"]] = (headers["X-ABGate-Arm"], headers["X-ABGate-Phase"])
        assert running.history is not None
    # Leaving flushed the buffer (the plane drained first).
    conn = await postgres.connect()
    try:
        rows = await conn.fetch(
            "SELECT request_id, arm, phase, bucket, status, instance FROM ab_testing.decisions"
        )
        cohorts = await conn.fetch("SELECT arm, percentage FROM ab_testing.cohorts ORDER BY arm")
    finally:
        await conn.close()
    assert len(rows) == 200
    assert {r["request_id"]: (r["arm"], str(r["phase"])) for r in rows} == told
    assert all(0 <= r["bucket"] < 10_000 and r["status"] == 200 for r in rows)
    assert [(r["arm"], r["percentage"]) for r in cohorts] == [
        ("control", 50.0),
        ("treatment", 50.0),
    ]


async def test_outcomes_by_request_id_land_in_the_decisions_arm_and_phase(
    session: ClientSession, agents: dict[str, str], postgres: PostgresServer
) -> None:
    config = history_config(agents, postgres)
    async with embedded(config) as running:
        before = await decide(session, running, "alice")
        async with session.post(
            running.control_url + "/api/flags/exp",
            headers=JSON,
            json={"percentage": 100, "reason": "all in"},
        ) as response:
            assert response.status == 200
        after = await decide(session, running, "bob")
        assert before["X-ABGate-Phase"] != after["X-ABGate-Phase"]
        items = [
            {"request_id": h["X-Request-Id"], "metric": "accuracy", "value": 1, "user": user}
            for h, user in ((before, "alice"), (after, "bob"))
        ]
        async with session.post(running.control_url + "/api/outcomes", json=items) as response:
            assert response.status == 200, await response.text()
        bad = [{"request_id": "nope", "metric": "accuracy", "value": 1}]
        async with session.post(running.control_url + "/api/outcomes", json=bad) as response:
            assert response.status == 400
            assert "[0].request_id" in (await response.json())["error"]
        _, sums = await running.worker.store.read("exp")
    for headers in (before, after):
        key = ("exp", int(headers["X-ABGate-Phase"]), headers["X-ABGate-Arm"], "accuracy")
        assert sum(s.count for k, s in sums.items() if k[:4] == key) == 1
    conn = await postgres.connect()
    try:
        rows = await conn.fetch("SELECT request_id, arm, phase FROM ab_testing.outcomes")
        flag_changes = await conn.fetchval("SELECT count(*) FROM ab_testing.flag_changes")
    finally:
        await conn.close()
    assert {r["request_id"]: (r["arm"], str(r["phase"])) for r in rows} == {
        h["X-Request-Id"]: (h["X-ABGate-Arm"], h["X-ABGate-Phase"]) for h in (before, after)
    }
    assert flag_changes == 1


async def test_postgres_killed_under_load_costs_no_answer_and_writing_resumes(
    session: ClientSession, agents: dict[str, str], postgres: PostgresServer
) -> None:
    config = history_config(agents, postgres, buffer=1000)
    async with embedded(config) as running:
        writer = running.history
        assert writer is not None
        for i in range(50):
            await decide(session, running, f"a{i}")
        await writer.flush()
        await postgres.kill()
        for i in range(1500):  # every answer still 200 (decide asserts it)
            await decide(session, running, f"b{i}")
        assert writer.dropped >= 500  # over the 1000 the buffer holds
        async with session.get(running.control_url + "/metrics") as response:
            assert "abgate_history_dropped_total" in await response.text()
        async with session.get(running.control_url + "/health/aggregate") as response:
            health = (await response.json())["components"]["history_store"]
        assert health["status"] == "degraded", health
        assert health["dropped"] == writer.dropped
        written = writer.written  # before the restart: the writer may flush before start returns
        await postgres.start()
        try:
            async with asyncio.timeout(60):
                while writer.written <= written:  # noqa: ASYNC110 (the writer's loop retries)
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pytest.fail(f"writing did not resume: last error {writer.last_error!r}")
        for i in range(20):
            await decide(session, running, f"c{i}")
    conn = await postgres.connect()
    try:
        count = await conn.fetchval("SELECT count(*) FROM ab_testing.decisions")
    finally:
        await conn.close()
    assert count == 50 + 1500 + 20 - writer.dropped


async def test_retention_drops_partitions_past_the_window(postgres: PostgresServer) -> None:
    conn = await postgres.connect()
    try:
        await migrate(conn, 2, date(2027, 1, 1))
        created, dropped = await maintain(conn, 2, date(2027, 1, 5))
        assert "decisions_20270108" in created  # days ahead
        assert "decisions_20261231" in dropped
        assert "decisions_20270102" in dropped  # ends Jan 3, the window starts Jan 3
        remaining = await partitions(conn, "decisions")
        assert min(remaining) == "decisions_20270103"
    finally:
        await conn.close()


async def test_the_stability_queries_run_and_answer(
    session: ClientSession, agents: dict[str, str], postgres: PostgresServer
) -> None:
    config = history_config(agents, postgres)
    async with embedded(config) as running:
        for i in range(30):
            await decide(session, running, f"user-{i}")
    sql = (ROOT / "scripts" / "sql" / "long-term-stability-metrics.sql").read_text()
    statements = [s for s in sql.split(";") if "SELECT" in s]
    conn = await postgres.connect()
    try:
        results = [await conn.fetch(statement) for statement in statements]
    finally:
        await conn.close()
    daily = results[0]
    assert sum(row["requests"] for row in daily) == 30
    assert {row["arm"] for row in daily} == {"control", "treatment"}
    assert all(row["error_rate_pct"] == 0 for row in daily)
    assert len(results) == 5


async def test_abgate_db_migrate_from_the_shell(postgres: PostgresServer, tmp_path: Path) -> None:
    config = write_config(tmp_path / "abgate.yaml", config_document("http://127.0.0.1:9"))
    for _ in range(2):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "abgate.control.cli",
            "db",
            "migrate",
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "ABGATE_HISTORY_URL": postgres.url},
        )
        output, _ = await proc.communicate()
        assert proc.returncode == 0, output
        assert b"schema up to date (partitions)" in output
