"""The statistics endpoints on inline summaries: results match scipy/statsmodels, bad input is
a 400 naming the field, and no NaN ever comes back."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import ClientSession
from scipy import stats
from statsmodels.stats.power import TTestIndPower

from abgate.control.serve import embedded
from tests.servers import make_config


async def call(
    session: ClientSession, agents: dict[str, str], path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with (
        embedded(make_config(agents)) as running,
        session.post(f"{running.control_url}/api/statistics/{path}", json=body) as response,
    ):
        return response.status, await response.json()


async def test_welch_inline(session: ClientSession, agents: dict[str, str]) -> None:
    status, body = await call(
        session,
        agents,
        "significance-test",
        {
            "test": "welch_t",
            "a": {"n": 1000, "mean": 0.8, "std": 0.4},
            "b": {"n": 1000, "mean": 0.84, "std": 0.37},
        },
    )
    assert status == 200
    reference = stats.ttest_ind_from_stats(0.84, 0.37, 1000, 0.8, 0.4, 1000, equal_var=False).pvalue
    assert body["p_value"] == pytest.approx(reference, rel=1e-9)
    assert body["test"] == "welch_t"
    # 1 - p, the highest level whose interval excludes 0; the interval's own level beside it
    assert body["confidence_level"] == pytest.approx(1 - reference, rel=1e-9)
    assert (body["interval_level"], body["alpha"]) == (0.95, 0.05)
    assert body["significant"] is True
    assert body["effect"]["absolute"] == pytest.approx(0.04)
    assert body["effect"]["relative"] == pytest.approx(0.05)
    assert body["ci"]["absolute"][0] < 0.04 < body["ci"]["absolute"][1]
    assert body["n"] == {"a": 1000, "b": 1000}
    assert "power" not in body  # power at the observed effect only restates the p-value
    # The effect these samples detect with 80% power: (z(0.975) + z(0.8)) * standard error.
    expected = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * (
        0.4**2 / 1000 + 0.37**2 / 1000
    ) ** 0.5
    assert body["minimum_detectable_effect"] == {"absolute": pytest.approx(expected), "power": 0.8}


async def test_proportions_and_sequential(session: ClientSession, agents: dict[str, str]) -> None:
    status, body = await call(
        session,
        agents,
        "significance-test",
        {
            "test": "two_proportion",
            "a": {"n": 1000, "successes": 800},
            "b": {"n": 1000, "successes": 840},
            "alternative": "greater",
        },
    )
    assert status == 200
    assert body["test"] == "two_proportion"
    assert body["p_value"] < 0.05
    status, sequential = await call(
        session,
        agents,
        "significance-test",
        {
            "test": "two_proportion",
            "a": {"n": 1000, "successes": 800},
            "b": {"n": 1000, "successes": 840},
            "sequential": True,
        },
    )
    assert status == 200
    assert sequential["test"] == "sequential"
    assert sequential["p_value"] > body["p_value"]  # always valid, so more conservative


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            {
                "test": "welch_t",
                "a": {"n": 10, "mean": 1, "std": 0},
                "b": {"n": 10, "mean": 2, "std": 0},
            },
            "a.std: both arms have zero variance: nothing to test",
        ),
        (
            {
                "test": "welch_t",
                "a": {"n": 1, "mean": 1, "std": 1},
                "b": {"n": 10, "mean": 2, "std": 1},
            },
            "a.n: expected a whole number from 2 to 1,000,000,000,000, got 1",
        ),
        (
            {
                "test": "two_proportion",
                "a": {"n": 10, "successes": 3},
                "b": {"n": 10, "successes": 11},
            },
            "b.successes: more successes (11) than observations (10)",
        ),
        (
            {
                "test": "two_proportion",
                "a": {"n": -5, "successes": 0},
                "b": {"n": 10, "successes": 1},
            },
            "a.n: expected a whole number from 1 to 1,000,000,000,000, got -5",
        ),
        (
            {"test": "welch_t", "a": {"n": 10, "mean": 1}, "b": {"n": 10, "mean": 2, "std": 1}},
            "a.std: required",
        ),
        ({"test": "anova"}, "test: expected welch_t or two_proportion"),
        (
            {"test": "welch_t", "alternative": "sideways"},
            "alternative: expected one of two-sided, greater, less",
        ),
        (
            {"test": "welch_t", "alpha": 1.5},
            "alpha: expected a number between 1e-10 and 0.5, got 1.5",
        ),
    ],
)
async def test_bad_input_names_the_field(
    session: ClientSession, agents: dict[str, str], body: dict[str, Any], error: str
) -> None:
    status, answer = await call(session, agents, "significance-test", body)
    assert (status, answer) == (400, {"error": error})


async def test_sample_size(session: ClientSession, agents: dict[str, str]) -> None:
    status, body = await call(
        session, agents, "sample-size", {"effect_size": 0.1, "power": 0.8, "alpha": 0.05}
    )
    assert status == 200
    reference = TTestIndPower().solve_power(effect_size=0.1, power=0.8, alpha=0.05)
    assert abs(body["minimum_sample_size"] - reference) <= 1  # a number: per arm
    assert body["sample_size"] == {
        "per_arm": body["minimum_sample_size"],
        "total": 2 * body["minimum_sample_size"],
    }
    status, body = await call(
        session, agents, "sample-size", {"baseline_rate": 0.1, "minimum_detectable_effect": 0.02}
    )
    assert status == 200
    assert body["minimum_sample_size"] > 1000
    status, body = await call(session, agents, "sample-size", {"effect_size": 0})
    assert (status, body["error"]) == (400, "effect_size: must be a finite number other than 0")
    status, body = await call(session, agents, "sample-size", {})
    assert status == 400


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            {
                "test": "welch_t",
                "a": {"n": 10, "mean": 1, "std": 1e200},
                "b": {"n": 10, "mean": 1, "std": 1},
            },
            "a.std: must be within ±1e+100, got 1e+200",
        ),
        (
            {
                "test": "welch_t",
                "a": {"n": 10, "mean": 1e308, "std": 1},
                "b": {"n": 10, "mean": -1e308, "std": 1},
            },
            "a.mean: must be within ±1e+100, got 1e+308",
        ),
        (
            {
                "test": "welch_t",
                "a": {"n": 3, "mean": 1, "std": 1e-100},
                "b": {"n": 3, "mean": 1, "std": 1},
            },
            "a.std: 0, or at least 1e-50, got 1e-100",
        ),
        (
            {
                "test": "welch_t",
                "a": {"n": 1e30, "mean": 1, "std": 1},
                "b": {"n": 3, "mean": 1, "std": 1},
            },
            "a.n: expected a whole number from 2 to 1,000,000,000,000, got 1e+30",
        ),
        (
            {
                "test": "welch_t",
                "alpha": 1e-320,
                "a": {"n": 3, "mean": 1, "std": 1},
                "b": {"n": 3, "mean": 1, "std": 1},
            },
            "alpha: expected a number between 1e-10 and 0.5, got 1e-320",
        ),
        (
            {
                "test": "two_proportion",
                "sequential": True,
                "alternative": "greater",
                "a": {"n": 10, "successes": 1},
                "b": {"n": 10, "successes": 2},
            },
            "alternative: the sequential test is two-sided",
        ),
        (
            {"test": "welch_t", "metric": "latency"},
            "test: give test, a and b (inline summaries), or leave test out for a test on "
            "live data (metric apply only there)",
        ),
        (  # no test: live data, on the current (the only) experiment, which has none yet
            {"metric": "latency"},
            "metric: not enough data: no phase has latency in both arms (no measurements yet)",
        ),
    ],
)
async def test_significance_inputs_that_used_to_fail(
    session: ClientSession, agents: dict[str, str], body: dict[str, Any], error: str
) -> None:
    assert await call(session, agents, "significance-test", body) == (400, {"error": error})


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            {"effect_size": 1e5},
            "effect_size: expected a number between -1000 and 1000, got 100000",
        ),
        (
            {"effect_size": 1e-12},
            "effect_size: too small to detect: it needs over 1,000,000,000,000 samples per arm",
        ),
        (
            {"effect_size": 1e-300},
            "effect_size: too small to detect: it needs over 1,000,000,000,000 samples per arm",
        ),
        (
            {"baseline_rate": 0.5, "minimum_detectable_effect": 1e-12},
            "minimum_detectable_effect: too small to detect: it needs over 1,000,000,000,000 "
            "samples per arm",
        ),
    ],
)
async def test_sample_size_inputs_that_used_to_fail(
    session: ClientSession, agents: dict[str, str], body: dict[str, Any], error: str
) -> None:
    assert await call(session, agents, "sample-size", body) == (400, {"error": error})


async def test_a_huge_effect_needs_the_smallest_sample(
    session: ClientSession, agents: dict[str, str]
) -> None:
    status, body = await call(session, agents, "sample-size", {"effect_size": 50})
    assert (status, body["minimum_sample_size"]) == (200, 2)
