"""The gate function by simulation (the full tables: benchmarks/rollout_sim.py) and the plan's
validation."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from abgate.config.errors import ConfigError
from abgate.config.parse_rollout import parse_plan
from abgate.control.rollout.gates import StageInputs, decide
from abgate.control.rollout.sizing import stage_alpha
from abgate.control.stats.clusters import ClusteredSums
from benchmarks.rollout_sim import Arm, experiment, simulate


def test_aa_rollouts_are_rarely_rolled_back_and_complete() -> None:
    rng = np.random.default_rng(11)
    ends = [simulate(rng, Arm(), per_tick=2000)[0] for _ in range(40)]
    assert ends.count("rolled_back") / len(ends) <= 0.05
    assert ends.count("completed") >= 36


@pytest.mark.parametrize(
    ("arm", "end"),
    [
        (Arm(converted=0.25), "completed"),
        (Arm(error=0.04), "rolled_back"),
        (Arm(latency=0.065), "rolled_back"),
        (Arm(converted=0.15), "rolled_back"),
    ],
)
def test_better_completes_and_worse_is_rolled_back_at_the_first_stage(arm: Arm, end: str) -> None:
    rng = np.random.default_rng(5)
    results = [simulate(rng, arm) for _ in range(5)]
    assert all(result[:2] == (end, 0 if end == "rolled_back" else 4) for result in results)


def test_alpha_is_split_over_the_stages_that_test() -> None:
    plan = experiment().rollout
    assert plan is not None
    assert stage_alpha(plan) == pytest.approx(0.05 / 5)  # 5, 25, 50, 75 and the holdout


def test_no_data_is_a_hold_never_a_pass_or_a_fail() -> None:
    exp = experiment()
    assert exp.rollout is not None
    decision = decide(exp.rollout, exp, StageInputs(5.0, 0, 0.0, 500, {}, {}))
    assert (decision.verdict, decision.kind) == ("hold", "insufficient")
    some = {
        "error": ClusteredSums.independent(1000, 10.0, 10.0),
        "latency": ClusteredSums.independent(990, 49.5, 2.6),
        "converted": ClusteredSums.independent(990, 198.0, 198.0),
    }
    few = {
        "error": ClusteredSums.independent(50, 0.0, 0.0),
        "latency": ClusteredSums.independent(50, 2.5, 0.13),
        "converted": ClusteredSums.independent(50, 10.0, 10.0),
    }
    decision = decide(exp.rollout, exp, StageInputs(100.0, 0, 0.0, 500, some, few))
    assert decision.verdict == "hold"
    assert decision.reason.startswith(
        "insufficient samples: converted (the primary: outcomes received) control 990 of "
    )
    assert decision.eta_seconds is not None
    assert decision.eta_seconds > 0


def test_integrity_holds() -> None:
    exp = experiment()
    assert exp.rollout is not None
    even = {"error": ClusteredSums.independent(1000, 0.0, 0.0)}
    srm = decide(exp.rollout, exp, StageInputs(100.0, 0, 0.0, 500, even, even))
    assert (srm.verdict, srm.kind) == ("hold", "integrity")
    assert "sample-ratio mismatch" in srm.reason
    stuck = decide(
        exp.rollout,
        exp,
        StageInputs(100.0, 0, 0.0, 5000, even, even, unconverged=("proxy-2 at v3",)),
    )
    assert "proxy-2 at v3" in stuck.reason
    stale = decide(exp.rollout, exp, StageInputs(100.0, 0, 0.0, 5000, even, even, stats_age=10.0))
    assert "old" in stale.reason


def test_a_rollback_beats_everything_else() -> None:
    exp = experiment()
    assert exp.rollout is not None
    inputs = StageInputs(100.0, 0, 0.0, 500, {}, {}, breaker_open_for=31.0, unconverged=("x",))
    assert decide(exp.rollout, exp, inputs).kind == "breaker"


def plan_of(text: str) -> None:
    parse_plan(yaml.safe_load(text), experiment().metrics, "<test>")


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("stages: [5, 25, 50]", "stages", "the last stage must be 100"),
        ("stages: [0, 100]", "stages[0]", "a stage above 0%"),
        ("stages: [{percentage: 50, approve: true}, 100]", "stages[0].approve", "unknown key"),
        ("primary: {metric: nope, minimum_detectable_effect: 1}", "primary.metric", "not a metric"),
        ("guardrails: [{metric: error, margin: -1}]", "guardrails[0].margin", "positive"),
        ("slo: {latency_p95: fast}", "slo.latency_p95", "duration"),
        ("slo: {throughput: 5}", "slo.throughput", "unknown key"),
        ("alpha: 0.3\npower: 0.2", "power", "above alpha"),
        ("tick: 0", "tick", "more than 0s"),
    ],
)
def test_bad_plans_are_refused_with_their_path(text: str, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_of(text)
    problems = {p.path: p.message for p in caught.value.problems}
    assert path in problems, problems
    assert message in problems[path]


@pytest.mark.parametrize(
    ("users", "flagged"), [((9_500, 500), False), ((9_500, 300), True), ((0, 0), False)]
)
def test_the_page_and_the_gates_check_the_split_with_one_test(
    users: tuple[int, int], flagged: bool
) -> None:
    """One read of the store, as the worker reports each phase and the controller builds
    the stage (control/measured.py::phase_arms): the SRM the page shows is the one the
    gate decides on, and the gate runs the same test on units it is given alone."""
    from abgate.control.measured import by_arm, phase_arms
    from abgate.control.stats_worker import evaluate
    from abgate.state.measurements import Phase, Sums
    from benchmarks.rollout_sim import config as sim_config

    plan = {"stages": [5, 100], "guardrails": [{"metric": "error", "margin": 0.01}]}
    config = sim_config(plan, sticky=[{"header": "X-User-Id"}])
    exp = config.experiments["e"]
    assert exp.rollout is not None
    sums = {
        ("e", 1, arm, "error", cluster): Sums(n // 40, n / 4_000, n / 4_000)  # 1% errors
        for arm, n in (("a", 20_000), ("b", 1_000))
        for cluster in range(40)
    }
    bits = {(1, "a"): users[0], (1, "b"): users[1]}
    report = evaluate(config.experiments["e"], [Phase(1, 500, 0.0)], sums, bits)
    page = report.phases[-1].srm
    stage = phase_arms(by_arm(sums), sums, bits, "e", 1, ("a", "b"), 0.05)
    assert stage.srm == page
    assert page.flagged is flagged
    for given in (stage.srm, None):
        inputs = StageInputs(
            100.0, 0, 0.0, 500, stage.control, stage.treatment, units=stage.srm.units, srm=given
        )
        gate = next(g for g in decide(exp.rollout, exp, inputs).gates if g.name == "srm")
        assert gate.status == ("fail" if flagged else "pass")
        assert f"p = {page.p_value:.2g}" in gate.detail
