"""Wiring of the history store (state/history): the writer task, the decision sink on the
data plane, and the control plane's records (experiments, cohorts, flag changes, rollout
events). Without history.postgres_url (or ABGATE_HISTORY_URL) nothing here runs."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.core import (
    Metric,
)

from abgate.config import Config, metrics_catalogue
from abgate.config.export import config_as_json
from abgate.proxy.history_sink import HistorySink
from abgate.proxy.metrics import ProxyMetrics
from abgate.proxy.runtime import DataPlane
from abgate.state.flags import Flag, FlagTable
from abgate.state.secrets import read_secret
from abgate.state.tasks import stop_task

if TYPE_CHECKING:
    from abgate.state.history.writer import HistoryWriter


def history_url(config: Config) -> str | None:
    return config.history.postgres_url or os.environ.get("ABGATE_HISTORY_URL") or None


def history_password(config: Config) -> Callable[[], str] | None:
    """history.password_env / password_file, read at each new connection; None: the URL's
    (or libpq's PGPASSWORD, ~/.pgpass, as asyncpg reads them)."""
    ref = config.history.password
    return None if ref is None else functools.partial(read_secret, ref)


async def start_history(
    stack: AsyncExitStack,
    config: Config,
    *,
    instance: str,
    table: FlagTable | None,
    maintenance: bool,
    grace: float,
) -> HistoryWriter | None:
    """The writer and its task, torn down by `stack`: the task stops, then one last flush
    within `grace`. Enter it before the data plane, so the plane drains first."""
    url = history_url(config)
    if url is None:
        return None
    from abgate.state.history.writer import HistoryWriter

    writer = HistoryWriter(
        url,
        instance=instance,
        capacity=config.history.buffer,
        retention_days=max(1, int(config.history.retention // 86_400)),
        maintenance=maintenance,
        password=history_password(config),
    )
    stack.push_async_callback(writer.aclose, grace)
    task = asyncio.create_task(writer.run(), name="abgate-history-writer")
    stack.push_async_callback(stop_task, task)
    if table is not None:
        _record_flags(writer, config, table)
        stack.callback(table.subscribe(lambda flag: _flag_changed(writer, config, flag)))
    return writer


def attach_history(
    writer: HistoryWriter | None, plane: DataPlane, metrics: ProxyMetrics, config: Config
) -> None:
    """The data plane's decisions into the writer (a sink), and its counters on /metrics."""
    if writer is None:
        return
    plane.add_sink(HistorySink(writer, config.history.sample))
    metrics.add_gauges(lambda: collect(writer))


def _record_flags(writer: HistoryWriter, config: Config, table: FlagTable) -> None:
    from abgate.state.history.writer import utc

    for name in config.experiments:
        digest = hashlib.sha256(
            orjson.dumps(config_as_json(config)["experiments"][name], option=orjson.OPT_SORT_KEYS)
        ).hexdigest()[:16]
        writer.add("experiments", name, digest)
        if name in table:
            flag = table.get(name)
            _cohorts(writer, config, flag, utc(flag.updated_at))


def _cohorts(writer: HistoryWriter, config: Config, flag: Flag, at: Any) -> None:
    experiment = config.experiments.get(flag.name)
    if experiment is None:
        return
    writer.add("cohort_ends", flag.name, flag.phase, at)
    writer.add("cohorts", flag.name, flag.phase, experiment.control.name, 100 - flag.percentage, at)
    writer.add("cohorts", flag.name, flag.phase, experiment.treatment.name, flag.percentage, at)


def _flag_changed(writer: HistoryWriter, config: Config, flag: Flag) -> None:
    from abgate.state.history.writer import utc

    at = utc(flag.updated_at)
    writer.add(
        "flag_changes",
        at,
        flag.name,
        flag.percentage,
        flag.version,
        flag.phase,
        flag.updated_by,
        flag.reason,
    )
    _cohorts(writer, config, flag, at)


def rollout_event(writer: HistoryWriter) -> Any:
    """A rollout-history listener that copies each entry to ab_testing.rollout_events."""
    from abgate.state.history.rows import Json
    from abgate.state.history.writer import utc

    def record(event: dict[str, Any]) -> None:
        writer.add(
            "rollout_events",
            utc(float(event["time"])),
            event["experiment"],
            event.get("state"),
            event.get("transition"),
            event.get("change"),
            event.get("decision"),
            event.get("reason"),
            Json(event.get("inputs")),  # encoded, made safe, at flush
            event["actor"],
        )

    return record


def collect(writer: HistoryWriter) -> Iterator[Metric]:
    dropped = metrics_catalogue.HISTORY_DROPPED.new()
    dropped.add_metric([], writer.dropped)
    yield dropped
    written = metrics_catalogue.HISTORY_WRITTEN.new()
    written.add_metric([], writer.written)
    yield written
    duplicates = metrics_catalogue.HISTORY_DUPLICATES.new()
    duplicates.add_metric([], writer.duplicates)
    yield duplicates
    dead = metrics_catalogue.HISTORY_DEAD_LETTERS.new()
    dead.add_metric([], writer.dead_letters)
    yield dead
    buffered = metrics_catalogue.HISTORY_BUFFERED.new()
    buffered.add_metric([], writer.buffered)
    yield buffered
    write = metrics_catalogue.HISTORY_WRITE_SECONDS.new()
    write.add_metric([], writer.writes.cumulative(), writer.writes.sum)
    yield write
    query = metrics_catalogue.HISTORY_QUERY_SECONDS.new()
    query.add_metric([], writer.queries.cumulative(), writer.queries.sum)
    yield query
    connected = metrics_catalogue.HISTORY_CONNECTED.new()
    connected.add_metric([], 1.0 if writer.connected else 0.0)
    yield connected


def run_db(config: Config, action: str) -> int:
    """`abgate db migrate|maintain`."""
    url = history_url(config)
    if url is None:
        print("abgate db: no history store: set history.postgres_url or ABGATE_HISTORY_URL")
        return 1
    from abgate.config.export import mask_url

    async def main() -> str:
        import asyncpg

        from abgate.state.history.schema import maintain, migrate

        conn = await asyncpg.connect(url, timeout=10, password=history_password(config))
        try:
            days = max(1, int(config.history.retention // 86_400))
            if action == "migrate":
                return f"schema up to date ({await migrate(conn, days)})"
            created, dropped = await maintain(conn, days)
            return f"created {len(created)} partition(s), dropped {len(dropped)}"
        finally:
            await conn.close()

    try:
        print(f"{mask_url(url)}: {asyncio.run(main())}")
    except Exception as exc:  # any failure is the command's answer, not a traceback
        print(f"abgate db {action}: {type(exc).__name__}: {exc}")
        return 1
    return 0
