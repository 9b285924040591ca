"""What the statistics worker produces, as typed values all the way to the API edge (as
gbstats keeps its result dataclasses): serialised once, in `as_json`, where they are sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from abgate.config.model import Direction, MetricType
from abgate.control.measured import PhaseArms, SampleRatio
from abgate.control.stats.frequentist import TestResult
from abgate.control.stats.strata import Combined
from abgate.state.measurements import Phase


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
    cuped: bool = False  # adjusted by the outcomes' pre-experiment covariate (stats/cuped.py)

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
            # CUPED applied: every outcome of the phase, both arms, carried its covariate
            "cuped": self.cuped,
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
    srm: SampleRatio  # on the units the split randomised (control/measured.py)
    # arm name -> those units: distinct users (estimated) and keyless requests
    units: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, phase: Phase, arms: PhaseArms, control: str, treatment: str) -> PhaseReport:
        (n_control, n_treatment), srm = arms.requests, arms.srm
        return cls(
            phase.id,
            phase.basis_points / 100,
            phase.started_at,
            {control: n_control, treatment: n_treatment},
            srm,
            {control: round(srm.control[0], 1), treatment: round(srm.treatment[0], 1)},
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "percentage": self.percentage,
            "started_at": self.started_at,
            "samples": self.samples,
            "units": self.units,
            "srm_p_value": self.srm.p_value,
            "srm_flagged": self.srm.flagged,
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

    def arms_json(self) -> dict[str, str]:
        return {"control": self.control_arm, "treatment": self.treatment_arm}

    def current_phase_json(self) -> dict[str, Any] | None:
        current = self.current_phase
        return current.as_json() if current is not None else None
