"""What the gates say is what the numbers are: the metric and arm that lack samples, an SLO
the treatment is seen to breach is not a "pass", and a minimum duration is not reached at
"30s of 30s"."""

from __future__ import annotations

from abgate.control.rollout.gates import StageInputs, decide
from abgate.control.stats.clusters import ClusteredSums
from benchmarks.rollout_sim import PLAN, experiment


def clustered(n: int, rate: float, clusters: int = 64) -> ClusteredSums:
    """n requests of a 0/1 metric spread evenly over `clusters` clusters of users."""
    per = n // clusters
    events = round(per * rate)
    return ClusteredSums.of([(True, per, float(events), float(events))] * clusters)


def latency(n: int, clusters: int = 64) -> ClusteredSums:
    per = n // clusters
    return ClusteredSums.of([(True, per, per * 0.05, per * 0.0026)] * clusters)


def test_insufficient_names_the_metric_lacking_samples_not_the_request_count() -> None:
    exp = experiment()
    assert exp.rollout is not None
    control = {"error": clustered(18_944, 0.01), "latency": latency(18_944)}  # no outcomes yet
    treatment = {"error": clustered(1_024, 0.01), "latency": latency(1_024)}
    decision = decide(exp.rollout, exp, StageInputs(100.0, 0, 0.0, 500, control, treatment))
    assert (decision.verdict, decision.kind) == ("hold", "insufficient")
    assert decision.reason == (
        "insufficient samples: converted (the primary: outcomes received) has 0 control "
        "samples, at least 10 needed to estimate its variance"
    )


def test_an_slo_seen_breached_is_a_hold_not_a_pass_and_keeps_the_stage() -> None:
    """20% of answers failing against a 5% limit, too few yet to be significant: the gate
    says so, and the stage is not promoted on it."""
    exp = experiment({**PLAN, "guardrails": [], "primary": None, "min_duration": "1s"})
    assert exp.rollout is not None
    control = {"error": clustered(1_900, 0.0, 40), "latency": latency(1_920, 40)}
    treatment = {"error": clustered(100, 0.23, 20), "latency": latency(100, 20)}
    decision = decide(exp.rollout, exp, StageInputs(100.0, 0, 0.0, 500, control, treatment))
    gate = next(g for g in decision.gates if g.name == "slo_error_rate")
    assert gate.status == "hold"
    assert gate.detail.startswith("error rate 20.00% over the limit 5.00%, not yet significant")
    assert decision.verdict == "hold"
    assert "slo_error_rate (observed over its limit)" in decision.reason


def test_min_duration_is_never_reached_at_its_own_length() -> None:
    exp = experiment({**PLAN, "guardrails": [], "primary": None, "min_duration": "30s"})
    assert exp.rollout is not None
    control = {"error": clustered(1_900, 0.0, 40), "latency": latency(1_920, 40)}
    treatment = {"error": clustered(100, 0.0, 20), "latency": latency(100, 20)}
    decision = decide(exp.rollout, exp, StageInputs(29.96, 0, 0.0, 500, control, treatment))
    assert decision.kind == "min_duration"
    assert decision.reason == "min_duration not reached: 29.9s of 30s"


def spread(n: int, mean: float, sd: float, clusters: int = 64) -> ClusteredSums:
    """n latencies (seconds) of `mean` and `sd`, evenly over `clusters` clusters of users."""
    per = n // clusters
    return ClusteredSums.of([(True, per, per * mean, per * (mean**2 + sd**2))] * clusters)


def test_gate_details_read_in_the_metric_s_unit_and_name_the_primary_s_harm() -> None:
    """Latency in ms, a rate in points, not raw seconds ("margin 0.00648"); the primary's harm
    test is any loss, not "margin 0" beside its non-inferiority margin."""
    plan: dict[str, object] = {
        **PLAN,
        "slo": {},
        "min_duration": "1s",
        "guardrails": [{"metric": "latency", "margin": 0.005}],
        "primary": {
            "metric": "converted",
            "minimum_detectable_effect": 0.02,
            "margin": 0.01,
        },
    }
    exp = experiment(plan)
    assert exp.rollout is not None
    control = {"converted": clustered(19_200, 0.2), "latency": spread(19_200, 0.05, 0.01)}
    slower = {"converted": clustered(19_200, 0.2), "latency": spread(19_200, 0.0653, 0.01)}
    decision = decide(exp.rollout, exp, StageInputs(100.0, 0, 0.0, 500, control, slower))
    assert (decision.verdict, decision.kind) == ("rollback", "harm")
    assert decision.reason.startswith(
        "harm on latency: treatment worse by 15.3 ms (mean), margin 5 ms (p = "
    ), decision.reason

    control = {"converted": clustered(480_000, 0.2), "latency": spread(480_000, 0.05, 0.01)}
    same = {"converted": clustered(30_000, 0.1975), "latency": spread(30_000, 0.05, 0.01)}
    decision = decide(exp.rollout, exp, StageInputs(100.0, 0, 0.0, 500, control, same))
    primary = next(g for g in decision.gates if g.name == "converted")
    assert primary.numbers is not None
    detail = primary.numbers.as_json()["detail"]
    assert detail.startswith("treatment worse by 0.3"), detail
    assert detail.endswith(" pp (rate), harm if worse at all"), detail
    shown = next(g for g in decision.gates if g.name == "non_inferiority")
    assert shown.detail == (  # latency shown within 5 ms; the primary's margin in points
        "undecided: not yet shown within the margin: converted, the primary (margin 1 pp, "
        "p = 0.089)"
    )


def test_a_passing_harm_gate_says_why_an_observed_excess_is_no_harm_yet() -> None:
    """A guardrail seen beyond its margin, not significantly, passes and says so: the
    observation alone ("worse by 2 ms, margin 0.5 ms") read like a failure (trial). Its
    JSON serves the gate's words, not the bare observation."""
    plan: dict[str, object] = {
        **PLAN,
        "slo": {"error_rate": 0.05},
        "primary": None,
        "min_duration": "1s",
        "guardrails": [{"metric": "latency", "margin": 0.0005}],
    }
    exp = experiment(plan)
    assert exp.rollout is not None
    control = {"error": clustered(6_400, 0.0), "latency": spread(640, 0.05, 0.02)}
    slower = {"error": clustered(6_400, 0.01), "latency": spread(640, 0.052, 0.02)}
    decision = decide(exp.rollout, exp, StageInputs(100.0, 0, 0.0, 500, control, slower))
    gate = next(g for g in decision.gates if g.name == "latency")
    assert gate.status == "pass"
    assert gate.detail.startswith(
        "treatment worse by 2 ms (mean), margin 0.5 ms: beyond the margin but not "
        "significantly (p = "
    ), gate.detail
    assert gate.as_json()["detail"] == gate.detail
    slo = next(g for g in decision.gates if g.name == "slo_error_rate")
    assert slo.detail.startswith("error rate 1.00% within the limit 5.00%: no harm shown"), slo


def test_no_difference_is_said_as_such_not_as_worse_by_zero() -> None:
    plan: dict[str, object] = {
        **PLAN,
        "slo": {},
        "primary": None,
        "min_duration": "1s",
        "guardrails": [{"metric": "error", "margin": 0.05}],
    }
    exp = experiment(plan)
    assert exp.rollout is not None
    same = {"error": clustered(6_400, 0.01), "latency": latency(6_400)}
    decision = decide(exp.rollout, exp, StageInputs(100.0, 0, 0.0, 500, same, same))
    gate = next(g for g in decision.gates if g.name == "error")
    assert gate.detail.startswith("no difference in error (0 pp, rate), margin 5 pp: no harm"), (
        gate.detail
    )
