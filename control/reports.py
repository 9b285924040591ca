"""What the statistics worker produces, as typed values all the way to the API edge (as
gbstats keeps its result dataclasses): serialised once, in `as_json`, where they are sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from abgate.config.model import Direction, MetricType
from abgate.control.stats.frequentist import TestResult
from abgate.control.stats.strata import Combined


@dataclass(frozen=True, slots=True)
class MetricResult:
    """One metric of the current phase, control (a) against treatment (b)."""

    type: MetricType
    direction: Direction
    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    improvement: float | None  # relative change signed by the direction: > 0 is better
    status: str  # "ok", or "not enough data: ..."
    fixed: TestResult | None = None
    sequential: TestResult | None = None  # what decisions read
    p_value_holm: float | None = None  # the sequential p adjusted within its family
    significant: bool = False  # at the Holm-adjusted p

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "direction": self.direction,
            "n": {"a": self.n_a, "b": self.n_b},
            "mean": {"a": self.mean_a, "b": self.mean_b},
            "improvement": self.improvement,
            "status": self.status,
            # What decisions read: the sequential test at the Holm-adjusted p (as below).
            "significant": self.significant,
            "p_value_holm": self.p_value_holm,
        }
        if self.fixed is not None:
            out["fixed"] = self.fixed.as_json()
        if self.sequential is not None:
            sequential = self.sequential.as_json()
            sequential["p_value_holm"] = self.p_value_holm
            sequential["significant"] = self.significant
            out["sequential"] = sequential
        return out


@dataclass(frozen=True, slots=True)
class PhaseReport:
    id: int  # the flag version that set this percentage
    percentage: float
    started_at: float
    samples: dict[str, int]  # arm name -> samples (requests)
    srm_p_value: float
    srm_flagged: bool
    # arm name -> units the SRM counts: distinct users (estimated) and keyless requests
    units: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "percentage": self.percentage,
            "started_at": self.started_at,
            "samples": self.samples,
            "units": self.units,
            "srm_p_value": self.srm_p_value,
            "srm_flagged": self.srm_flagged,
        }


@dataclass
class ExperimentReport:
    name: str
    control_arm: str
    treatment_arm: str
    phases: list[PhaseReport] = field(default_factory=list)
    metrics: dict[str, MetricResult] = field(default_factory=dict)
    across_phases: dict[str, Combined] = field(default_factory=dict)
    evaluated_at: float = 0.0

    @property
    def current_phase(self) -> PhaseReport | None:
        return self.phases[-1] if self.phases else None

    def as_json(self) -> dict[str, Any]:
        current = self.current_phase
        return {
            "name": self.name,
            "arms": {"control": self.control_arm, "treatment": self.treatment_arm},
            "phases": [phase.as_json() for phase in self.phases],
            "current_phase": current.as_json() if current is not None else None,
            "metrics": {name: result.as_json() for name, result in self.metrics.items()},
            "across_phases": {
                name: combined.as_json() for name, combined in self.across_phases.items()
            },
            "evaluated_at": self.evaluated_at,
        }
