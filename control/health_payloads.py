"""The health endpoints' answers (control/health_api.py), declared once
(control/payloads.py). A component's report stays the dict its source builds (the data
plane's upstreams, the flag store, the history writers ...): typed here are the parts a
monitor reads, the overall status and the ML side's list."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from abgate.control.payloads import Answer


class ReadyAnswer(Answer):
    ready: bool
    reason: str | None = Field(
        default=None, exclude_if=lambda why: why is None, description="why not ready"
    )


class MlComponent(Answer):
    """One piece of the ML side; what else its kind reports passes through (a breaker's
    state, a shadow's agreement rate, reasons)."""

    model_config = ConfigDict(extra="allow")
    name: str
    kind: str
    status: str | None


class AggregateAnswer(Answer):
    overall_health: Literal["healthy", "degraded", "unhealthy"] = Field(
        description="the worst component (an ML upstream down counts as degraded: fallback "
        "keeps users on deterministic answers)"
    )
    components: dict[str, Any] = Field(description="each component: status and reasons")
    ml_components: list[MlComponent] = Field(
        description="the ML side: each ML upstream and its breaker, each shadow, the "
        "statistics worker, the rollout controller"
    )
