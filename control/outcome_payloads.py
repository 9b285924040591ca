"""A business outcome as `POST /api/outcomes` takes it (control/experiments_api.py),
declared once (control/payloads.py). What needs the running config (the experiment, its
arms and metrics, the phases so far, whether a user is required) is checked there."""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import AfterValidator, Field, WithJsonSchema
from pydantic.functional_validators import PlainValidator

from abgate.config.fields import shown
from abgate.control.payloads import Answer, Body, Expected, refuse, whole

MAX_OUTCOMES = 10_000
MAX_AGE = 366 * 86_400.0  # an outcome's decided_at: at most a year back
MAX_SKEW = 60.0  # and a minute ahead (clocks differ)


def _phase(value: Any) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        value = int(value)  # the header's value as it came: "2"
    value = whole(value)  # 5.0 is 5
    if isinstance(value, bool) or not isinstance(value, int):
        raise refuse(f"expected the X-ABGate-Phase header's whole number, got {shown(value)}")
    return value


def _recent(value: float | None) -> float | None:
    """A decision's time within the window, by this server's clock when it is read."""
    now = time.time()
    if value is not None and not now - MAX_AGE <= value <= now + MAX_SKEW:
        raise refuse(
            f"expected the decision's time in Unix seconds, within a year before now and "
            f"{MAX_SKEW:g}s after, got {shown(value)}"
        )
    return value


def _value(value: Any) -> bool | float:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    raise refuse(f"expected a finite number or a boolean, got {shown(value)}")


Phase = Annotated[
    int | None,
    PlainValidator(_phase),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": "^[0-9]{1,18}$"},
            ],
            "description": "X-ABGate-Phase of the decision (a number, or the header's digits "
            "as they came); without it, the phase current when reported",
        }
    ),
]


class OutcomeItem(Body):
    experiment: str | None = None
    arm: Annotated[str | None, Field(description="X-ABGate-Arm")] = None
    metric: Annotated[str, Field(description="declared under experiments.NAME.metrics")]
    value: Annotated[
        bool | float,  # a boolean kept as one: only a binary metric takes it
        PlainValidator(_value),
        WithJsonSchema(
            {"type": ["number", "boolean"], "description": "0/1 or a boolean for a binary metric"}
        ),
    ]
    phase: Phase = None
    user: Annotated[
        Annotated[str, Field(min_length=1, max_length=1000)] | None,
        Field(
            description="the sticky key's value: the outcome counts in its user's cluster "
            "(users are the unit of analysis). Required where the experiment has a sticky key "
            "(a 400 otherwise); null: the decision carried no key, the outcome is its own unit"
        ),
        Expected("the sticky key's value, a string of 1 to 1,000 characters", got=True),
    ] = None
    request_id: Annotated[
        Annotated[str, Field(min_length=1, max_length=200)] | None,
        Field(
            description="X-Request-Id of the decision (with the history store): its "
            "experiment, arm, phase and time come from the decision's record"
        ),
        Expected("the X-Request-Id of a decision"),
    ] = None
    decided_at: Annotated[
        float | None,
        AfterValidator(_recent),
        Field(
            description="the decision's time (Unix seconds), within "
            f"{MAX_AGE / 86_400:g} days before the server's clock and {MAX_SKEW:g} s after "
            "(a window that moves with the clock, which JSON Schema cannot bound: "
            "x-abgate-window-seconds states it); required for a metric with a maturity "
            "window (unless request_id gives it): the outcome counts once its decision is "
            "that old",
            json_schema_extra={"x-abgate-window-seconds": {"before": MAX_AGE, "after": MAX_SKEW}},
        ),
        Expected("the decision's time in Unix seconds", got=True),
    ] = None
    covariate: Annotated[
        float | None,
        Field(
            description="the user's value of this metric before the experiment (CUPED; null "
            "or left out: none): where every outcome of the metric in a phase carries one, in "
            "both arms, the tests judge the metric adjusted by it, with less variance, and "
            "the report says so (`cuped`)"
        ),
        Expected(
            "a finite number (the user's value of the metric before the experiment)", got=True
        ),
    ] = None


OUTCOMES = {"type": "array", "minItems": 1, "maxItems": MAX_OUTCOMES, "items": OutcomeItem}


class AcceptedAnswer(Answer):
    accepted: int
