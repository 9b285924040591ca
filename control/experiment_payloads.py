"""The experiments' own answers (control/experiments_api.py): which experiments there are,
and one with its phases, routes and metrics, declared once (control/payloads.py). The
statistics reports' answers (significance, comparison) stay in openapi_answers.py until
they are typed (issue 27 §3)."""

from __future__ import annotations

from pydantic import Field

from abgate.control.payloads import Answer


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
