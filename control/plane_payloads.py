"""The payloads of the data plane's routes on the control API (control/api.py): a breaker
forced, the shadow comparisons (control/payloads.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from abgate.control.payloads import Answer, Body, Expected


class BreakerBody(Body):
    state: Annotated[
        Literal["forced_open", "forced_closed", "auto"],
        Expected(
            "forced_open, forced_closed or auto",
            missing="expected forced_open, forced_closed or auto",
        ),
    ]


Count = Annotated[int, Field(ge=0)]


class ShadowStatsAnswer(Answer):
    """Per experiment as the data plane reports it, and the totals over all of them."""

    experiments: list[dict[str, Any]]
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
