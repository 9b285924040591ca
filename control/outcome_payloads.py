"""A business outcome as `POST /api/outcomes` takes it (control/experiments_api.py),
declared once (control/payloads.py). What needs the running config (the experiment, its
arms and metrics, the phases so far, whether a user is required) is checked there."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, WithJsonSchema
from pydantic.functional_validators import PlainValidator

from abgate.control.payloads import Answer, Body, Expected, refuse

MAX_OUTCOMES = 10_000


def _phase(value: Any) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        value = int(value)  # the header's value as it came: "2"
    if isinstance(value, bool) or not isinstance(value, int):
        raise refuse(f"expected the X-ABGate-Phase header's whole number, got {value!r}")
    return value


def _value(value: Any) -> bool | float:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    raise refuse(f"expected a finite number or a boolean, got {value!r}")


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
        Expected("the sticky key's value (a string)"),
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
        Field(
            description="the decision's time (Unix seconds); required for a metric with a "
            "maturity window (unless request_id gives it): the outcome counts once its "
            "decision is that old"
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
