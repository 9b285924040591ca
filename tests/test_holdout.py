"""The holdout at the last stage (issue 26 item 7): the plan's key, the gates there, the alpha
the whole ramp spends, and small seeded versions of benchmarks/holdout_sim.py."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from abgate.config.errors import ConfigError
from abgate.config.model import HoldoutConfig, RolloutPlan
from abgate.config.parse import parse_config
from abgate.config.parse_rollout import parse_plan
from abgate.control.rollout.gates import StageInputs, decide
from abgate.control.rollout.sizing import stage_alpha
from abgate.control.stats.clusters import ClusteredSums
from benchmarks.holdout_sim import (
    ACCURATE,
    MUCH_WORSE,
    WITH,
    WITHOUT,
    ends,
    novelty,
)
from benchmarks.rollout_sim import PLAN, experiment


def _plan(document: Mapping[str, object]) -> RolloutPlan:
    plan = experiment(dict(document)).rollout
    assert plan is not None
    return plan


def test_a_plan_with_a_primary_holds_out_5_percent_by_default() -> None:
    plan = experiment().rollout
    assert plan is not None
    assert plan.holdout == HoldoutConfig(500)
    assert plan.live_bp(len(plan.stages) - 1) == 9_500
    assert plan.live_bp(0) == 500
    assert _plan({k: v for k, v in PLAN.items() if k != "primary"}).holdout is None
    off = _plan({**PLAN, "holdout": False})
    assert off.holdout is None
    assert off.live_bp(len(off.stages) - 1) == 10_000
    assert _plan({**PLAN, "holdout": {"percentage": 10}}).holdout == HoldoutConfig(1_000)


@pytest.mark.parametrize(
    ("holdout", "message"),
    [
        ({"percentage": 0}, "above 0 and below 50"),
        ({"percentage": 50}, "above 0 and below 50"),
        ({"percentage": 30}, "leaves the treatment at 70%, not above the stage before (75%)"),
        ({}, "required"),
        ({"percentage": 5, "bake": "1h"}, "unknown key"),
        ("yes", "expected"),
    ],
)
def test_a_bad_holdout_is_refused_naming_its_key(holdout: object, message: str) -> None:
    metrics = experiment().metrics
    with pytest.raises(ConfigError) as raised:
        parse_plan({**PLAN, "holdout": holdout}, metrics, "plan")
    problem = raised.value.problems[0]
    assert problem.path.startswith("holdout"), problem
    assert message in problem.message, problem


def test_a_bad_holdout_in_the_yaml_names_its_line() -> None:
    text = """\
upstreams:
  a: {url: "http://127.0.0.1:1"}
  b: {url: "http://127.0.0.1:2"}
routes: [{prefix: /, experiment: e}]
experiments:
  e:
    control: a
    treatment: b
    percentage: 0
    rollout:
      primary: {metric: error, minimum_detectable_effect: 0.01}
      holdout:
        percentage: 60
"""
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "<test>")
    [problem] = raised.value.problems
    assert (problem.path, problem.line) == ("experiments.e.rollout.holdout.percentage", 13)


def test_the_default_holdout_is_named_as_the_default_where_it_does_not_fit() -> None:
    """A plan that never wrote `holdout` is told about the default it got, at its stages'
    line, with the ways out (a newcomer read an error about a key they had not written)."""
    text = """\
upstreams:
  a: {url: "http://127.0.0.1:1"}
  b: {url: "http://127.0.0.1:2"}
routes: [{prefix: /, experiment: e}]
experiments:
  e:
    control: a
    treatment: b
    percentage: 0
    rollout:
      stages: [5, 96, 100]
      primary: {metric: error, minimum_detectable_effect: 0.01}
"""
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "<test>")
    [problem] = raised.value.problems
    assert (problem.path, problem.line) == ("experiments.e.rollout.stages", 11)
    assert problem.message.startswith("the default holdout (5% kept on control")
    assert "`holdout: false`" in problem.message


def test_the_whole_ramp_spends_alpha_once() -> None:
    """Bonferroni over every stage that tests: the holdout is one, and so is a 100% stage
    that tests SLOs (before, those ran at the whole alpha on top of the ramp's)."""
    assert stage_alpha(_plan(PLAN)) == pytest.approx(0.05 / 5)
    assert stage_alpha(_plan({**PLAN, "holdout": False})) == pytest.approx(0.05 / 5)
    assert stage_alpha(_plan({**PLAN, "holdout": False, "slo": {}})) == pytest.approx(0.05 / 4)


def _same(n: int) -> dict[str, ClusteredSums]:
    return {
        "error": ClusteredSums.independent(n, n * 0.01, n * 0.01),
        "latency": ClusteredSums.independent(n, n * 0.05, n * 0.0032),
        "converted": ClusteredSums.independent(n, n * 0.2, n * 0.2),
    }


def test_the_holdout_bakes_then_completes_and_never_reads_as_a_promotion() -> None:
    exp = experiment()
    plan = exp.rollout
    assert plan is not None
    last = len(plan.stages) - 1
    control, treatment = _same(200_000), _same(3_800_000)
    baking = decide(plan, exp, StageInputs(5.0, last, 0.0, 9_500, control, treatment))
    assert (baking.verdict, baking.kind) == ("hold", "bake")
    assert "baking with the holdout" in baking.reason
    assert {g.name for g in baking.gates} >= {"srm", "samples"}  # compared like any stage
    done = decide(plan, exp, StageInputs(plan.bake + 1, last, 0.0, 9_500, control, treatment))
    assert (done.verdict, done.kind) == ("complete", "holdout")
    assert "released to 100%" in done.reason


def test_a_model_60_points_worse_rolls_back_in_the_holdout() -> None:
    """Without a holdout it completes after the bake (the issue's finding); with one it is
    rolled back at the last stage, every time."""
    before = ends(MUCH_WORSE, WITHOUT, runs=3, seed=7, control=ACCURATE, start_stage=4)
    assert before["completed"] == pytest.approx(1.0)
    after = ends(MUCH_WORSE, WITH, runs=5, seed=7, control=ACCURATE, start_stage=4)
    assert after["rolled_back"] == pytest.approx(1.0)
    assert after["last_stage"] == pytest.approx(1.0)


def test_a_fading_novelty_effect_is_caught_by_the_holdout() -> None:
    """+6 points fading to -2 (time constant 650 ticks), a bake of 1,200 s: without a
    holdout every rollout shipped it; with one most are stopped at the last stage (the full
    table, with its share, is in RESULTS.md)."""
    fading = novelty(650)
    before = ends(fading, {**WITHOUT, "bake": "1200s"}, runs=2, seed=2674)
    assert before["completed"] == pytest.approx(1.0)
    after = ends(fading, {**WITH, "bake": "1200s"}, runs=4, seed=2674)
    assert after["last_stage"] >= 0.5, after
