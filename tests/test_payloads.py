"""A body refused by its model is the API's own 400, naming the field: pydantic's
ValidationError mapped once (control/payloads.py). And the document's schemas are the
models' own: what a model refuses, its schema refuses."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest

from abgate.control.flag_payloads import RollbackBody, SetFlagsBody
from abgate.control.http import ApiError
from abgate.control.openapi import OPENAPI
from abgate.control.outcome_payloads import OutcomeItem
from abgate.control.payloads import Body, validate
from abgate.control.rollout_payloads import ApproveBody, IncidentBody
from abgate.control.stats_payloads import WelchTestBody

SUMMARY = {"n": 10, "mean": 1.0, "std": 1.0}


@pytest.mark.parametrize(
    ("model", "body", "where", "error"),
    [
        (
            ApproveBody,
            {"stage": "50"},
            "",
            "stage: expected the percentage you approve, above 0, at most 100",
        ),
        (IncidentBody, {}, "", "experiment: required"),
        (IncidentBody, {"experiment": "exp", "open": 1}, "", "open: expected true or false"),
        (
            RollbackBody,
            {"experiments": []},
            "",
            "experiments: expected a non-empty list of experiment or group names (leave the "
            "field out to roll back every experiment)",
        ),
        (
            RollbackBody,
            {"timeout": 301},
            "",
            "timeout: expected seconds, more than 0 and at most 300",
        ),
        (
            SetFlagsBody,
            {"flags": {"exp": "5"}},
            "",
            'flags.exp: expected a number from 0 to 100, got a string ("5")',
        ),
        (
            WelchTestBody,
            {"test": "welch_t", "a": {**SUMMARY, "median": 1}, "b": SUMMARY},
            "",
            "a: unknown field(s): median (expected: mean, n, std)",
        ),
        (
            OutcomeItem,
            {"metric": "converted", "value": "yes"},
            "[2]",
            '[2].value: expected a finite number or a boolean, got "yes"',
        ),
        (OutcomeItem, {"value": 1}, "[0]", "[0].metric: required"),
        (
            OutcomeItem,
            {"metric": "m", "value": 1, "colour": 1},
            "[4]",
            "[4]: unknown field(s): colour (expected: arm, covariate, decided_at, experiment, "
            "metric, phase, request_id, user, value)",
        ),
    ],
)
def test_a_refused_body_names_the_field(
    model: type[Body], body: dict[str, Any], where: str, error: str
) -> None:
    with pytest.raises(ApiError) as refused:
        validate(model, body, where=where)
    assert (refused.value.status, refused.value.message) == (400, error)


def _schema_of(name: str) -> dict[str, Any]:
    """A component with its references resolvable, as a client would read it."""
    return {"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]}


@pytest.mark.parametrize(
    ("model", "body", "valid"),
    [
        (ApproveBody, {"stage": 50}, True),
        (ApproveBody, {"stage": 0}, False),
        (ApproveBody, {"stage": True}, False),
        (IncidentBody, {"experiment": "exp", "description": ""}, False),
        (RollbackBody, {"experiments": ["exp"], "timeout": 0.5}, True),
        (RollbackBody, {"experiments": "exp"}, False),
        (WelchTestBody, {"test": "welch_t", "a": SUMMARY, "b": SUMMARY}, True),
        (WelchTestBody, {"test": "welch_t", "a": SUMMARY}, False),
        (WelchTestBody, {"test": "welch_t", "a": SUMMARY, "b": SUMMARY, "alpha": 0.5}, False),
        (OutcomeItem, {"metric": "m", "value": True, "user": None}, True),
        (OutcomeItem, {"metric": "m", "value": 1, "user": ""}, False),
    ],
)
def test_the_document_says_what_the_model_takes(
    model: type[Body], body: dict[str, Any], valid: bool
) -> None:
    checker = jsonschema_rs.Draft202012Validator(_schema_of(model.__name__))
    assert checker.is_valid(body) is valid
    try:
        validate(model, body)
        taken = True
    except ApiError:
        taken = False
    assert taken is valid
