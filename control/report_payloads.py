"""The reports' answers (control/impact_api.py), declared once (control/payloads.py): a
rollout's stability, its business impact and final assessment on the comparison of record,
its days at 100%."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from abgate.control.evidence_payloads import ArmCounts, ArmMeans, Count, EvidenceAnswer, Interval
from abgate.control.payloads import Answer


class StabilityAnswer(Answer):
    experiment: str
    incidents_count: Count
    rollbacks: Count
    uptime_percentage: float | None = Field(description="answers that were not errors, %")
    answers: Count
    percentage: float
    seconds_at_current_percentage: float


class LongTermAnswer(Answer):
    experiment: str
    days_at_100_percent: float = Field(
        description="seconds at 100% times control.report_time_scale, in days"
    )
    seconds_at_100_percent: float = Field(description="wall time")
    time_scale: float
    incidents_count: Count


class BusinessRow(Answer):
    """A declared (business) metric on the comparison of record."""

    direction: str
    improvement_percentage: float | None = Field(description="relative, %, > 0 better")
    interval: Interval | None = Field(
        description="the same, always valid (as the gates read), in %: it brackets "
        "improvement_percentage"
    )
    significant: bool
    p_value: float | None
    n: ArmCounts
    mean: ArmMeans
    status: str


class BusinessImpactAnswer(Answer):
    experiment: str
    metrics: dict[str, BusinessRow]
    metric: str | None = Field(description="the primary metric (else the first declared)")
    improvement_percentage: float | None = Field(
        description="the primary's relative improvement in %, > 0 better"
    )
    interval: Interval | None = Field(description="the same, always valid, in %")
    p_value: float | None
    evidence: EvidenceAnswer


class ImprovementDetail(Answer):
    """Of `<metric>_improvement` and `time_savings`: relative, %, > 0 better."""

    metric: str
    interval: Interval | None = Field(description="always valid, in %")
    n: ArmCounts


class ScoreDetail(Answer):
    """Of `<metric>_score`: the treatment arm's mean."""

    metric: str
    arm: str = Field(description="the treatment arm")
    interval: Interval | None = Field(description="its mean's, fixed, at 1 - alpha")
    n: Count = Field(description="the treatment arm's samples")


Detail = ImprovementDetail | ScoreDetail


class FinalAssessmentAnswer(Answer):
    """Flat for a dashboard: `<metric>_improvement` (relative, %, > 0 better),
    `<metric>_score` (the treatment arm's mean) for each declared metric, and `time_savings`
    (latency reduction of the treatment, %)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float | None] = Field(init=False)

    experiment: str
    rollout_state: str | None
    percentage: float
    metrics: dict[str, BusinessRow]
    details: dict[str, Detail] = Field(
        description="for each flat field: the metric, its interval and samples"
    )
    evidence: EvidenceAnswer
