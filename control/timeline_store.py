"""The timeline in PostgreSQL (history.postgres_url): the charts survive a restart of the
control process. Bounded as in memory: what is stored are the points the series keeps
(control/timeline.py), each written once when kept and deleted when the series thins itself,
and each series' tick count and stride. Writes go through the history writer's buffer (one
transaction per flush, in order); reads happen once, when the statistics worker starts. The
rollout's decisions come back from ab_testing.rollout_events, where they are recorded
already.

Fail safe: PostgreSQL down at the start, the timeline starts empty (logged once); a point
the buffer cannot hold is dropped and counted by the writer, and a series read back is
thinned again to its stride, so a gap never breaks it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from abgate.control.timeline import (
    CAPACITY,
    MetricPoint,
    Point,
    RolloutView,
    Series,
    event_of,
    rollout_json,
)
from abgate.state.history.rows import Json

if TYPE_CHECKING:
    from abgate.state.history.writer import HistoryWriter

log = logging.getLogger("abgate.stats")
LOAD_TIMEOUT = 5.0  # seconds the worker waits for its timeline at start


def point_json(point: Point) -> dict[str, Any]:
    return {
        "t": point.t,
        "phase": point.phase,
        "percentage": point.percentage,
        "samples": dict(point.samples),
        "metrics": {name: m.as_json() for name, m in point.metrics.items()},
        "rollout": rollout_json(point.rollout),
        "latency": {arm: list(counts) for arm, counts in point.latency.items()},
    }


def point_of_json(data: dict[str, Any]) -> Point:
    view = data.get("rollout")
    return Point(
        float(data["t"]),
        data.get("phase"),
        data.get("percentage"),
        {str(k): int(v) for k, v in (data.get("samples") or {}).items()},
        {name: MetricPoint(**m) for name, m in (data.get("metrics") or {}).items()},
        None
        if view is None
        else RolloutView(
            view["state"],
            view["stage"],
            view["decision"],
            view["kind"],
            view["reason"],
            view["eta_seconds"],
            view.get("needed") or {},
            None,  # the plan is not stored: a point's lines were drawn from it already
        ),
        {str(arm): [int(c) for c in counts] for arm, counts in (data.get("latency") or {}).items()},
    )


class TimelineStore:
    def __init__(self, writer: HistoryWriter, acting: Any = None) -> None:
        self.writer = writer
        # With several control processes (Redis), only the one whose controller acts writes.
        self.acting = acting

    def saved(self, name: str, series: Series, kept: bool, thinned: bool) -> None:
        """After a tick was added to `series`: what changed, to the writer's buffer."""
        if self.acting is not None and not self.acting():
            return
        if thinned:
            self.writer.add("timeline_thin", name, series.stride)
        if kept:
            point = series.points[-1]
            when = datetime.fromtimestamp(point.t, UTC)
            self.writer.add("timeline_points", name, series.kept[-1], when, Json(point_json(point)))
        self.writer.add("timeline_series", name, series.ticks, series.stride)

    async def load(self, names: list[str]) -> dict[str, Series]:
        """Each experiment's series as stored, with its rollout's last decisions."""
        out: dict[str, Series] = {}
        states = await self.writer.read(
            "SELECT experiment, ticks, stride FROM ab_testing.timeline_series "
            "WHERE experiment = ANY($1::text[])",
            names,
        )
        for state in states:
            name, stride = state["experiment"], max(1, int(state["stride"]))
            rows = await self.writer.read(
                "SELECT tick, point FROM ab_testing.timeline_points WHERE experiment = $1 "
                "AND (tick % $2 = 0 OR tick = 1) ORDER BY tick",  # the run's first stays
                name,
                stride,
            )
            if len(rows) > CAPACITY:  # the first point, and the newest beside it
                rows = rows[:1] + rows[1 - CAPACITY :]
            series = Series(stride=stride, ticks=int(state["ticks"]))
            series.kept = [int(row["tick"]) for row in rows]
            series.points = [point_of_json(_decoded(row["point"])) for row in rows]
            events = await self.writer.read(
                "SELECT extract(epoch FROM time)::float8 AS time, actor, state, transition, "
                "change, decision, reason FROM ab_testing.rollout_events "
                "WHERE experiment = $1 ORDER BY time DESC LIMIT $2",
                name,
                series.events.maxlen,
            )
            series.events.extend(event_of(dict(row)) for row in reversed(events))
            out[name] = series
        return out


def _decoded(value: Any) -> dict[str, Any]:
    """asyncpg returns jsonb as text unless a codec is set."""
    if isinstance(value, str):
        import orjson

        decoded: dict[str, Any] = orjson.loads(value)
        return decoded
    return dict(value)
