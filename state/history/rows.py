"""What the history store writes, and how every value is made safe for PostgreSQL first.

A record reaches PostgreSQL from outside abgate's control (a client's X-Request-Id, a reason
typed by a person, a value in a rollout's inputs): text with a NUL, or a lone surrogate
(bytes that were not UTF-8, decoded with surrogateescape), is refused by PostgreSQL or by the
driver, and one such row used to fail its whole batch at every retry. So every string is
made safe at the edge, when the flush encodes it: NUL and undecodable bytes become visible
escapes (`\\x00`, `\\xff`), and request ids are bounded (they are indexed). What PostgreSQL
still refuses is set aside by the flush (state/history/flush.py), never retried.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import asyncpg
import orjson

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
# Small tables: the statement of each, with its identity where a row has no natural one.
STATEMENTS = {
    "outcomes": "INSERT INTO ab_testing.outcomes (time, request_id, experiment, arm, phase, "
    "metric, value, reported_at, record_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
    "ON CONFLICT DO NOTHING",
    "rollout_events": "INSERT INTO ab_testing.rollout_events (time, experiment, state, "
    "transition, change, decision, reason, inputs, actor, record_id) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10) ON CONFLICT DO NOTHING",
    "flag_changes": "INSERT INTO ab_testing.flag_changes (time, flag, percentage, version, "
    "phase, actor, reason) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    "cohorts": "INSERT INTO ab_testing.cohorts (experiment, phase, arm, percentage, "
    "started_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    "cohort_ends": "UPDATE ab_testing.cohorts SET ended_at = $3 WHERE experiment = $1 "
    "AND phase <> $2 AND ended_at IS NULL",
    "experiments": "INSERT INTO ab_testing.experiments (name, config_hash) VALUES ($1, $2) "
    "ON CONFLICT (name) DO UPDATE SET config_hash = EXCLUDED.config_hash, "
    "updated_at = now()",
    # The statistics worker's timeline (control/timeline_store.py): points kept, points
    # thinned away when the series doubles its stride, and the series' tick count and stride.
    "timeline_points": "INSERT INTO ab_testing.timeline_points (experiment, tick, time, "
    "point) VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (experiment, tick) DO UPDATE SET "
    "time = EXCLUDED.time, point = EXCLUDED.point",
    "timeline_thin": "DELETE FROM ab_testing.timeline_points WHERE experiment = $1 "
    "AND tick % $2 <> 0 AND tick <> 1",  # the run's first point stays (control/timeline.py)
    "timeline_series": "INSERT INTO ab_testing.timeline_series (experiment, ticks, stride) "
    "VALUES ($1, $2, $3) ON CONFLICT (experiment) DO UPDATE SET ticks = EXCLUDED.ticks, "
    "stride = EXCLUDED.stride, updated_at = now()",
}
IDENTIFIED = frozenset({"outcomes", "rollout_events"})  # the writer adds a record id
REQUEST_ID_MAX = 200  # characters; the outcomes API takes request ids up to this length
# PostgreSQL classes of errors that belong to the row, not to the server: data exception,
# integrity constraint (a row no partition takes), program limit (an index entry too big).
ROW_ERROR_CLASSES = frozenset({"22", "23", "54"})


class Json:
    """A JSON value for a jsonb column: made safe and encoded at flush, not when added."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Json({self.value!r})"


def safe_text(text: str, limit: int | None = None) -> str:
    """`text` as PostgreSQL takes it: valid UTF-8, no NUL, at most `limit` characters."""
    if not text.isascii():  # O(1) in CPython: the common case costs one flag test
        try:  # undecodable bytes (surrogateescape) back to bytes, shown as \\xNN
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # other lone surrogates (a JSON "\\ud800")
            raw = text.encode("utf-8", "backslashreplace")
        text = raw.decode("utf-8", "backslashreplace")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if limit is not None and len(text) > limit:
        text = text[:limit]
    return text


def safe_value(value: Any) -> Any:
    """Every string inside `value` (nested lists and mappings too) made safe."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_text(str(k)): safe_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [safe_value(v) for v in value]
    return value


def safe_args(args: Iterable[Any]) -> list[Any]:
    """A small table's arguments for asyncpg: strings made safe, JSON encoded."""
    out: list[Any] = []
    for value in args:
        if isinstance(value, str):
            value = safe_text(value)
        elif isinstance(value, Json):
            # orjson: non-finite numbers as null (jsonb refuses NaN), as the API shows them.
            value = orjson.dumps(safe_value(value.value), default=str).decode()
        out.append(value)
    return out


def decision_record(row: DecisionRow, instance: str, utc: Any) -> tuple[Any, ...]:
    """A decision as the COPY sends it: its time as a datetime, its strings made safe."""
    return (
        utc(row[0]),
        safe_text(row[1], REQUEST_ID_MAX),
        safe_text(row[2]),
        row[3],
        safe_text(row[4]),
        row[5],
        safe_text(row[6]),
        row[7],
        row[8],
        None if row[9] is None else safe_text(row[9]),
        None if row[10] is None else safe_text(row[10]),
        instance,
    )


def refused(exc: BaseException) -> bool:
    """The error belongs to the rows written, not to the connection or the server: retrying
    the same rows would fail the same way, so they are isolated and set aside instead."""
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in ROW_ERROR_CLASSES
    # Raised by the driver while encoding a value (out of int32 range, a wrong type, text it
    # cannot encode); asyncpg's client-side DataError is a ValueError too.
    return isinstance(exc, ValueError | TypeError | OverflowError)


def as_dead_letter(values: Iterable[Any]) -> str:
    """A refused record's values as an ASCII JSON array (escapes kept, nothing refused)."""
    plain = [safe_value(v.value if isinstance(v, Json) else v) for v in values]
    return json.dumps(plain, ensure_ascii=True, default=str)
