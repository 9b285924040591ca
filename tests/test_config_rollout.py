"""A rollout plan's problems, all in one run: a refused value hides no check across the
plan's settings that does not read it, in the config and in a plan given to the API."""

from __future__ import annotations

import pytest

from abgate.config import ConfigError
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
        "tick: expected a duration such as 1.5, '250ms' or '5s', got 'banana'",
        "stages[1]: stages must rise: each above the one before",
        "power: must be above alpha (0.05), got 0.01",
    ]
