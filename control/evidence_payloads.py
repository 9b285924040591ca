"""The comparison of record (control/evidence.py) as every answer that reads it names it,
declared once (control/payloads.py): which phases the numbers are of, and one metric on
them. Built from the typed results; the OpenAPI document reads the same declarations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from abgate.control.payloads import Answer

if TYPE_CHECKING:
    from abgate.control.evidence import Evidence, EvidenceReport

Count = Annotated[int, Field(ge=0)]
Interval = Annotated[list[float], Field(min_length=2, max_length=2)]


class EvidencePhase(Answer):
    """A phase as the evidence names it (the timeline's: timeline_payloads.PhaseAnswer)."""

    id: int
    percentage: float
    started_at: float


class EvidenceAnswer(Answer):
    """Which phases the numbers are of: the current phase while a stage runs, the rollout's
    earlier phases with both arms (precision-weighted) once it is at 100% or rolled back
    (control/evidence.py)."""

    basis: str
    phases: list[EvidencePhase]
    alpha: float
    primary: str | None

    @classmethod
    def of(cls, report: EvidenceReport) -> EvidenceAnswer:
        return cls(
            basis=report.basis,
            phases=[
                EvidencePhase(id=p.id, percentage=p.basis_points / 100, started_at=p.started_at)
                for p in report.phases
            ],
            alpha=report.alpha,
            primary=report.primary,
        )


class ArmCounts(Answer):
    control: Count
    treatment: Count


class ArmMeans(Answer):
    control: float | None
    treatment: float | None


class MetricEvidence(Answer):
    """One metric on the phases the evidence names, treatment against control."""

    metric: str
    type: str
    direction: str
    status: str = Field(description='"ok", or why not: "not enough data: ..."')
    phases: list[int] = Field(description="the ids of the phases combined")
    n: ArmCounts
    sample_size: Count
    mean: ArmMeans
    effect: float | None = Field(description="treatment - control, in the metric's unit")
    ci: Interval | None = Field(description="always valid, at 1 - alpha")
    p_value: float | None = Field(description="always valid (the confidence sequence)")
    p_value_fixed: float | None
    improvement: float | None = Field(description="relative, signed by direction: > 0 better")
    improvement_interval: Interval | None
    power: float | None = Field(
        description="power to detect the plan's minimum detectable effect at these samples "
        "(a design quantity, not the observed effect's power); primary only"
    )
    minimum_detectable_effect: float | None
    treatment_interval: Interval | None = Field(description="its mean's, fixed, at 1 - alpha")

    @classmethod
    def of(cls, evidence: Evidence) -> MetricEvidence:
        return cls.model_validate(
            {
                **{name: getattr(evidence, name) for name in _AS_IS},
                "phases": list(evidence.phases),
                "n": {"control": evidence.n_control, "treatment": evidence.n_treatment},
                "sample_size": evidence.sample_size,
                "mean": {"control": evidence.mean_control, "treatment": evidence.mean_treatment},
            }
        )


_AS_IS = tuple(name for name in MetricEvidence.model_fields if name not in ("phases", "n", "mean"))
