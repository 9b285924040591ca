"""The timeline's answer, `GET /api/experiments/{name}/timeline` (control/timeline.py's
series_json, for the charts), declared once (control/payloads.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from abgate.control.payloads import Answer

Arms = dict[str, int]  # control and treatment


class PhaseAnswer(Answer):
    id: int
    percentage: float
    started_at: float


class MetricPointAnswer(Answer):
    role: Literal["primary", "guardrail", "other"]
    effect: float | None = Field(
        description="treatment minus control in the metric's unit, signed so that up is "
        "better (times -1 for a lower-is-better metric)"
    )
    low: float | None = Field(description="the always-valid sequential interval")
    high: float | None
    line: float | None = Field(
        description="primary: the plan's minimum effect (+); guardrail: its margin (-)"
    )
    p_value: float | None = Field(description="sequential, Holm-adjusted")
    status: str


class LatencyAnswer(Answer):
    n: int = Field(ge=0, description="answers in the point's window")
    p50: float | None = Field(description="milliseconds")
    p95: float | None = Field(description="milliseconds")


class PointRolloutAnswer(Answer):
    state: str
    stage: int = Field(ge=0)
    decision: str
    kind: str
    reason: str
    eta_seconds: float | None
    needed: Arms | None


class PointAnswer(Answer):
    t: float = Field(description="Unix time of the tick")
    phase: int | None
    percentage: float | None = Field(description="the treatment's share, %")
    samples: Arms
    rollout: PointRolloutAnswer | None
    metrics: dict[str, MetricPointAnswer]
    latency_ms: dict[str, LatencyAnswer] = Field(
        description="per arm label, the answers since the point before"
    )


class EventAnswer(Answer):
    """A rollout history entry as the ramp chart marks it (control/timeline.py's event_of):
    what happened and why, its inputs left out; a field it lacked is null. From PostgreSQL
    (after a restart) an event has no stage."""

    time: float
    actor: str
    state: str | None = Field(description="the rollout's, after it")
    transition: str | None = Field(description="the state it moved to, if it did")
    change: str | None = Field(description="the percentage's change, in words")
    stage: int | None = Field(description="the stage's index")
    decision: str | None = Field(description="the verdict, or the action")
    reason: str | None


class TimelineAnswer(Answer):
    name: str
    arms: dict[str, str]
    capacity: int = Field(ge=2, description="most points kept")
    stride: int = Field(
        ge=1, description="ticks per kept point (doubles each time the series fills)"
    )
    ticks: int = Field(ge=0)
    phases: list[PhaseAnswer]
    points: list[PointAnswer]
    events: list[EventAnswer] = Field(
        description="the rollout's decisions and changes as they happened (the last 500)"
    )
