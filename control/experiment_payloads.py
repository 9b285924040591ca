"""The experiments' answers (control/experiments_api.py), declared once
(control/payloads.py): which experiments there are, one with its phases, routes and
metrics, each metric's significance, and the means per arm on the comparison of record."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ConfigDict, Field

from abgate.control.evidence_payloads import Count, EvidenceAnswer, Interval, MetricEvidence
from abgate.control.payloads import Answer
from abgate.control.stats_payloads import CohortCounts, CohortMeans, TestResultAnswer

if TYPE_CHECKING:
    from abgate.control.reports import MetricResult


class ArmNames(Answer):
    control: str
    treatment: str


class PhaseReportAnswer(Answer):
    """A phase: one treatment percentage, from the flag version that set it."""

    id: int
    percentage: float
    started_at: float
    samples: dict[str, int] = Field(description="arm -> requests")
    units: dict[str, float] = Field(
        description="arm -> what the SRM counts: distinct users (estimated) and keyless requests"
    )
    srm_p_value: float
    srm_flagged: bool


class ExperimentSummary(Answer):
    name: str
    arms: ArmNames
    current_phase: PhaseReportAnswer | None


class ExperimentsAnswer(Answer):
    experiments: list[ExperimentSummary]


class RouteAnswer(Answer):
    name: str
    prefix: str | None
    regex: str | None
    methods: list[str] | None


class DeclaredMetric(Answer):
    name: str
    type: str
    direction: str
    outcome: bool = Field(description="reported with POST /api/outcomes (not from the answer)")


class ExperimentAnswer(Answer):
    """What tools (abgate simulate, abgate load-test) read: where to send, what to report."""

    name: str
    arms: ArmNames
    phases: list[PhaseReportAnswer]
    current_phase: PhaseReportAnswer | None
    evaluated_at: float
    routes: list[RouteAnswer] = Field(description="the routes that lead to this experiment")
    metrics: list[DeclaredMetric]


class SequentialResultAnswer(TestResultAnswer):
    p_value_holm: float | None = Field(description="adjusted by Holm within its family")


def _absent(value: object) -> bool:
    return value is None


class MetricReportAnswer(Answer):
    """One metric of the current phase, control (a) against treatment (b)."""

    type: str
    direction: str
    n: CohortCounts
    mean: CohortMeans
    improvement: float | None = Field(description="relative, signed by direction: > 0 better")
    status: str = Field(description='"ok", or why not: "not enough data: ..."')
    significant: bool = Field(description="the sequential test at the Holm-adjusted p")
    p_value_holm: float | None
    cuped: bool = Field(
        description="adjusted by the pre-experiment covariate every outcome carried"
    )
    fixed: TestResultAnswer | None = Field(
        default=None,
        exclude_if=_absent,
        description="the fixed-horizon test; absent until it can be computed",
    )
    sequential: SequentialResultAnswer | None = Field(
        default=None,
        exclude_if=_absent,
        description="the always-valid test decisions read; absent until computed",
    )

    @classmethod
    def of(cls, result: MetricResult) -> MetricReportAnswer:
        return cls.model_validate(result.as_json())


class CombinedAnswer(Answer):
    """A metric's difference over the phases, precision-weighted (control/stats/strata.py)."""

    effect: float
    ci: Interval
    p_value: float
    phases: Count = Field(description="how many phases it combines")


class SignificanceAnswer(Answer):
    name: str
    phase: PhaseReportAnswer | None
    metrics: dict[str, MetricReportAnswer] = Field(description="each metric of the current phase")
    across_phases: dict[str, CombinedAnswer]
    metric: str | None = Field(description="the plan's primary metric")
    p_value: float | None = Field(description="the primary's, always valid")
    power: float | None = Field(description="to detect the plan's minimum effect")
    sample_size: Count
    primary: MetricEvidence | None
    evidence: EvidenceAnswer
    note: str


class ComparisonRow(Answer):
    """A metric's mean per arm (each under its arm's name), its change and samples."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float | None] = Field(init=False)

    direction: str
    relative_change: float | None = Field(description="(treatment - control) / |control|")
    relative_improvement: float | None = Field(
        description="signed by the metric's direction: positive is better"
    )
    n: dict[str, Count] = Field(description="arm -> samples")


class ComparisonAnswer(Answer):
    """`<arm>_<metric>`: the arm's mean (ml_accuracy, deterministic_accuracy), beside the
    nested `metrics`."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float | None] = Field(init=False)

    name: str
    metrics: dict[str, ComparisonRow]
    evidence: EvidenceAnswer
