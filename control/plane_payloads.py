"""The payloads of the data plane's routes on the control API (control/api.py): breakers,
shadow comparisons, the config and its reloads (control/payloads.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from abgate.control.payloads import Answer, Body, Expected

if TYPE_CHECKING:
    from abgate.control.reload import Reloader


class BreakerBody(Body):
    state: Annotated[
        Literal["forced_open", "forced_closed", "auto"],
        Expected(
            "forced_open, forced_closed or auto",
            missing="expected forced_open, forced_closed or auto",
        ),
    ]


Count = Annotated[int, Field(ge=0)]


class Disagreement(Answer):
    """A copy whose answer differed from the user's (the last few kept)."""

    differences: dict[str, Any] = Field(
        description='what differed: status -> {control, treatment}; body -> "not JSON"; '
        "each compared JSONPath -> {control, treatment}, the answers' values as they were "
        "(any JSON, null: absent)"
    )
    latency_ms: dict[str, float] = Field(description="control and treatment")


class ShadowExperimentStats(Answer):
    """One experiment's shadow as the data plane reports it (proxy/shadow.py's stats)."""

    experiment: str
    total_decisions: Count = Field(description="copies that came back (compared or failed)")
    agreements: Count
    disagreements: Count
    agreement_rate: float | None
    errors: Count
    dropped: dict[str, Count] = Field(description="copies not sent, by reason")
    dropped_in_a_row: Count = Field(description="since the last copy sent")
    in_flight: Count
    latency_mean_ms: dict[str, float | None] = Field(description="per side; null: none yet")
    recent_disagreements: list[Disagreement]


class ShadowStatsAnswer(Answer):
    """Per experiment as the data plane reports it, and the totals over all of them."""

    experiments: list[ShadowExperimentStats]
    total_decisions: Count = Field(description="shadow copies, all experiments")
    agreements: Count
    disagreements: Count
    errors: Count
    agreement_rate: float | None


class BreakerAnswer(Answer):
    """A breaker as the data plane reports it (proxy/breaker.py's snapshot)."""

    upstream: str
    state: str
    reason: str
    open_for_seconds: float
    consecutive_failures: int


class InstanceBreakers(Answer):
    id: str
    address: str
    breakers: dict[str, str] = Field(description="upstream -> breaker state")


class BreakersAnswer(Answer):
    breakers: list[BreakerAnswer] = Field(description="this process's data plane, if any")
    instances: list[InstanceBreakers] = Field(description="every proxy instance (Redis)")


class ReloadAnswer(Answer):
    """A reload's outcome (control/reload.py's ReloadOutcome)."""

    result: Literal["success", "failure", "unchanged"] = Field(
        description="unchanged: the file is the running config already, nothing applied"
    )
    trigger: str
    at: float
    problems: list[str] = Field(description="why a reload was refused")
    warnings: list[str] = Field(description="what could not be applied live")


class ConfigAnswer(Answer):
    source: str
    loaded_at: float
    last_reload: ReloadAnswer | None
    reloads: dict[str, int] = Field(description="reloads so far, by result")
    config: dict[str, Any] = Field(description="the running config, secrets masked")

    @classmethod
    def of(cls, reloader: Reloader, config: dict[str, Any]) -> ConfigAnswer:
        return cls(
            source=str(reloader.path),
            loaded_at=reloader.loaded_at,
            last_reload=None
            if reloader.last is None
            else ReloadAnswer.model_validate(reloader.last),
            reloads=reloader.counts,
            config=config,
        )
