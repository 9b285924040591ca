"""The rollout endpoints' payloads (control/rollout_api.py): each request body and answer
declared once (control/payloads.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from abgate.control.flag_payloads import decimals
from abgate.control.gate_payloads import GateEntry, HistoryEntry
from abgate.control.payloads import Answer, Body, Expected, refuse
from abgate.state.rollouts import RolloutStatus

Reason = Annotated[
    str,
    Field(max_length=500, description="recorded in the history"),
    Expected("a string of at most 500 characters"),
]
Percentage = Annotated[
    float,
    Field(ge=0, le=100),
    Expected("a percentage between 0 and 100", missing="expected a percentage between 0 and 100"),
]
Arms = dict[str, int]  # control and treatment
StagePhase = Literal["ramp", "holdout", "released", "bake"]
ArgoDecision = Literal["promote", "hold", "rollback"]
# Flagger's webhook payload: each field a string but its metadata.
FlaggerText = Annotated[str, Expected("a string (Flagger's webhook payload)")]


class ActionBody(Body):
    reason: Reason = ""


class StartBody(Body):
    plan: Annotated[
        dict[str, Any] | None,
        Field(
            description="as the YAML rollout section (stages, primary, guardrails, slo, "
            "alpha, power, bake, holdout: {percentage: 5} or false, ...)"
        ),
        Expected("an object like the YAML rollout section"),
    ] = None
    reason: Reason = ""


def _two_decimals(value: Any) -> Any:
    """A stage's percentage as flag writes take it: at most two decimals as written (the
    body is read with Decimal numbers), so 50.001 is not approved as 50."""
    if isinstance(value, Decimal):
        if value.is_finite() and decimals(value) > 2:
            raise refuse(f"at most two decimals (0.01% steps), got {value}")
        return float(value)
    return value


class ApproveBody(Body):
    stage: Annotated[
        Annotated[float, Field(gt=0, le=100, json_schema_extra={"multipleOf": 0.01})] | None,
        BeforeValidator(_two_decimals),
        Field(description="the stage's percentage, as a check of what you approve"),
        Expected("the percentage you approve, above 0, at most 100"),
    ] = None
    reason: Reason = ""


class FlaggerBody(Body):
    """What Flagger sends to a webhook (`message` and `type` for events)."""

    name: FlaggerText = ""
    namespace: FlaggerText = ""
    phase: FlaggerText = ""
    checksum: FlaggerText = ""
    type: FlaggerText = ""
    message: FlaggerText = ""
    metadata: Annotated[dict[str, Any], Expected("an object (Flagger's webhook payload)")] = Field(
        default_factory=dict
    )


class DecisionBody(Body):
    experiment: Annotated[str | None, Field(description="default: the current experiment")] = None
    current_percentage: Percentage
    target_percentage: Percentage


class IncidentBody(Body):
    experiment: str
    open: Annotated[bool, Expected("true or false")] = True
    description: Annotated[
        str,
        Field(min_length=1, max_length=500),
        Expected("a non-empty string of at most 500 characters"),
    ] = "opened by hand"


class StageAnswer(Answer):
    index: int
    percentage: float = Field(
        description="the treatment share the stage runs at (95 in a 5% holdout)"
    )
    phase: StagePhase = Field(
        description="ramp: a stage before the last; holdout: the last stage with a control "
        "share kept through its bake, compared like the others; released: its gates passed "
        "and the holdout went to 100%; bake: 100% with no control arm (SLOs only)"
    )
    holdout: float | None = Field(
        description="the control share the last stage keeps (percent), null: none"
    )
    started_at: float
    min_duration: float


class NextStageAnswer(Answer):
    percentage: float
    approval: bool
    approved: bool


class RolloutAnswer(Answer):
    experiment: str
    state: RolloutStatus
    stage: StageAnswer
    stages: list[float]
    decision: str
    reason: str
    eta_seconds: float | None
    gates: list[GateEntry]
    needed: Arms
    next: NextStageAnswer | None
    incident: str | None
    started_at: float
    started_by: str
    updated_at: float
    generation: int
    acting: bool


class RolloutsAnswer(Answer):
    rollouts: list[RolloutAnswer]


class RolloutHistoryAnswer(Answer):
    experiment: str
    history: list[HistoryEntry] = Field(description="newest first")


class VerdictAnswer(Answer):
    """Argo Rollouts' web metric provider reads `decision`."""

    decision: ArgoDecision
    kind: str
    reason: str
    eta_seconds: float | None
    needed: Arms
    gates: list[GateEntry]
    verdict: Literal["rollback", "hold", "continue", "complete"]
    state: RolloutStatus


class HookAnswer(Answer):
    """A Flagger hook's answer: 200 lets Flagger go on, 403 holds it."""

    decision: ArgoDecision
    approved: bool
    reason: str


class RecordedAnswer(Answer):
    recorded: bool


class DecisionAnswer(Answer):
    decision: Literal["hold", "continue", "rollback"]
    reason: str
    eta_seconds: float | None
    checks: list[GateEntry]
    current_percentage: float
    target_percentage: float


class IncidentAnswer(Answer):
    experiment: str
    incident: str | None
