"""What each gate measured, as typed values (as gbstats keeps its result dataclasses): the
gates read their fields, and they are serialised once, in `as_json`, where a decision is
sent (the rollout API, the history, the page). Pure, like the gates."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from abgate.control.rollout.reach import Reach
from abgate.control.rollout.sizing import Sizing


@dataclass(frozen=True, slots=True)
class Harm:
    """A harm test's observation on a guardrail or the primary: the treatment worse than
    control by `harm` (in the metric's unit, signed by its direction), against `margin`."""

    detail: str  # in words, in its unit: "treatment worse by 1.2 pp (rate), margin 1 pp"
    harm: float
    margin: float
    n_control: int
    n_treatment: int

    def as_json(self) -> dict[str, Any]:
        n = {"control": self.n_control, "treatment": self.n_treatment}
        return {"detail": self.detail, "harm": self.harm, "margin": self.margin, "n": n}


@dataclass(frozen=True, slots=True)
class OverLimit:
    """An SLO's observation: the treatment's rate (errors, or requests slower than the
    latency limit) against the plan's absolute limit."""

    detail: str  # in words: "error rate 6.00% over the limit 5.00%"
    rate: float
    limit: float
    n: int

    @property
    def over(self) -> bool:
        return self.rate > self.limit

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Tested:
    """A harm test on its gate: what it observed, its always-valid one-sided p-value, that
    p adjusted by Holm within the stage's family, and the stage's alpha. The observation's
    words are served as the gate's `detail` (as they always were)."""

    observed: Harm | OverLimit
    p_value: float
    p_value_holm: float
    alpha: float

    def as_json(self) -> dict[str, Any]:
        tested = {"p_value": self.p_value, "p_value_holm": self.p_value_holm, "alpha": self.alpha}
        return {**self.observed.as_json(), **tested}


@dataclass(frozen=True, slots=True)
class RatioChecked:
    """The sample-ratio gate passed at this always-valid p-value."""

    p_value: float

    def as_json(self) -> dict[str, Any]:
        return {"p_value": self.p_value}


@dataclass(frozen=True, slots=True)
class Samples:
    """The samples gate: the binding metric's samples per arm against its size. While it
    holds: every target's sizing, and the users reached where the units are users; once it
    passes: each target metric's samples per arm."""

    have: dict[str, int]
    needed: dict[str, int]
    metric: str | None  # the binding target metric
    sizing: tuple[Sizing, ...] | None = None  # while holding
    users: Reach | None = None  # while holding, in the unit analysed
    by_metric: dict[str, dict[str, int]] | None = None  # once passed

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"have": self.have, "needed": self.needed, "metric": self.metric}
        if self.sizing is not None:
            out["sizing"] = [entry.as_json() for entry in self.sizing]
        if self.users is not None:
            out["users"] = self.users.as_json()
        if self.by_metric is not None:
            out["by_metric"] = self.by_metric
        return out


GateNumbers = Tested | RatioChecked | Samples
