"""A rollout plan's problems, all in one run: a refused value hides no check across the
plan's settings that does not read it, in the config and in a plan given to the API."""

from __future__ import annotations

import pytest

from abgate.config import ConfigError, parse_config
from abgate.config.model import MetricConfig
from abgate.config.parse_rollout import parse_plan
from tests.test_config import ROLLOUT, problems

PLAN = ROLLOUT.replace("sideways", "higher").replace("[50, 10,", "[50, 25,") + "      power: 0.01\n"
RISE = (
    "experiments.rollout.rollout.stages[1] (line 18): stages must rise: each above the one before"
)
POWER = "experiments.rollout.rollout.power (line 19): must be above alpha (0.05), got 0.01"


@pytest.mark.parametrize(
    ("setting", "refused", "also"),
    [
        ("tick: banana", "tick", [RISE, POWER]),
        ("bake: -1s", "bake", [RISE, POWER]),
        ("holdout: {percentage: 150}", "holdout.percentage", [RISE, POWER]),
        ("guardrails: [{metric: latency}]", "guardrails[0].margin", [RISE, POWER]),
        ("alpha: 2", "alpha", [RISE]),  # power is judged against alpha: not here
    ],
)
def test_a_refused_value_hides_no_independent_check(
    setting: str, refused: str, also: list[str]
) -> None:
    shown = problems(PLAN + f"      {setting}\n")
    assert shown[0].startswith(f"experiments.rollout.rollout.{refused} (line 20): "), shown
    assert shown[1:] == also


def test_a_plan_given_to_the_api_lists_every_problem() -> None:
    plan = {"stages": [50, 25, 100], "power": 0.01, "tick": "banana"}
    with pytest.raises(ConfigError) as caught:
        parse_plan(plan, (MetricConfig("accuracy", "binary", "higher"),), "plan")
    assert [str(p) for p in caught.value.problems] == [
        "tick: expected a duration such as 1.5, '250ms' or '5s', got \"banana\"",
        "stages[1]: stages must rise: each above the one before",
        "power: must be above alpha (0.05), got 0.01",
    ]


RATE = ROLLOUT.replace("sideways", "higher").replace("[50, 10, 100]", "[50, 100]")


@pytest.mark.parametrize(
    ("primary", "says"),
    [
        ("minimum_detectable_effect: 1.5", "an absolute effect must be below 1, got 1.5"),
        ("minimum_detectable_effect: 1", "an absolute effect must be below 1, got 1"),
        ("minimum_detectable_effect: 200%", "a relative effect must be below 100%, got 200%"),
        ("minimum_detectable_effect: 0.01, margin: 1", "must be below 1, got 1"),
    ],
)
def test_an_effect_no_rate_can_move_by_is_refused(primary: str, says: str) -> None:
    """A trial: an MDE of 1.5 on a binary metric made a margin of 1.125: the
    non-inferiority gate could never fail."""
    text = RATE.replace("minimum_detectable_effect: 0.01", primary)
    shown = problems(text)
    assert len(shown) == 1, shown
    assert shown[0].startswith("experiments.rollout.rollout.primary."), shown
    assert "accuracy is a rate" in shown[0]
    assert "must stay in (0, 1)" in shown[0]
    assert shown[0].endswith(says), shown


def test_effects_a_rate_can_move_by_are_taken() -> None:
    """Below 1, or a relative one where worse is higher (an error rate doubled)."""
    text = RATE.replace("0.01}", "0.99}") + "      guardrails: [{metric: error, margin: 200%}]\n"
    assert parse_config(text).experiments["rollout"].rollout is not None
    continuous = RATE.replace("binary", "continuous").replace("0.01}", "1.5}")
    assert parse_config(continuous).experiments["rollout"].rollout is not None


def test_a_guardrail_margin_on_a_rate_and_a_plan_given_to_the_api() -> None:
    plan = {
        "primary": {"metric": "accuracy", "minimum_detectable_effect": 1.5},
        "guardrails": [{"metric": "error", "margin": 1}],
    }
    with pytest.raises(ConfigError) as caught:
        parse_plan(plan, (MetricConfig("accuracy", "binary", "higher"),), "plan")
    assert [p.path for p in caught.value.problems] == [
        "primary.minimum_detectable_effect",
        "guardrails[0].margin",
    ]
    assert "error is a rate" in caught.value.problems[1].message


def test_a_missing_value_is_said_to_be_required() -> None:
    """A trial: "got None" for a guardrail's missing margin."""
    text = RATE.replace("{metric: accuracy, minimum_detectable_effect: 0.01}", "{metric: accuracy}")
    assert problems(text + "      guardrails: [{metric: error}]\n") == [
        "experiments.rollout.rollout.primary.minimum_detectable_effect (line 17): required: "
        "the smallest effect to detect",
        "experiments.rollout.rollout.guardrails[0].margin (line 19): required: how much worse "
        "it may be",
    ]
