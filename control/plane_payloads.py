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
