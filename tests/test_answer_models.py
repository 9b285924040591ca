"""The answers declared as models encode exactly what their typed sources said before
(issue 27 §2): every kind of gate, a history entry with and without the fields an event
lacks, a metric with and without its tests, a health report's components and ML side, the
timeline's events, the final assessment's details, the shadow statistics."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from abgate.control.evidence import Evidence, EvidenceReport
from abgate.control.experiment_payloads import MetricReportAnswer
from abgate.control.gate_payloads import GateEntry, HarmGate, SamplesGate, gate_entries
from abgate.control.health_api import ml_components
from abgate.control.health_payloads import AggregateAnswer
from abgate.control.impact_api import assessment
from abgate.control.plane_payloads import ShadowExperimentStats, ShadowStatsAnswer
from abgate.control.report_payloads import FinalAssessmentAnswer
from abgate.control.reports import MetricResult
from abgate.control.rollout import gate_numbers as numbers
from abgate.control.rollout.gate_numbers import Harm, OverLimit, RatioChecked, Samples
from abgate.control.rollout.gates import Gate
from abgate.control.rollout.reach import Reach
from abgate.control.rollout.sizing import Sized, TooFewToSize
from abgate.control.rollout_payloads import RolloutHistoryAnswer
from abgate.control.stats import frequentist
from abgate.control.timeline import Series, event_of, series_json
from abgate.control.timeline_payloads import TimelineAnswer
from tests.servers import make_config

GATES = (
    Gate("breaker", "pass", "closed"),
    Gate(
        "harm accuracy",
        "pass",
        "",
        numbers.Tested(Harm("worse by 0.01", 0.01, 0.02, 40, 41), 0.3, 0.6, 0.05),
    ),
    Gate(
        "slo error",
        "fail",
        "",
        numbers.Tested(OverLimit("6% over 5%", 0.06, 0.05, 900), 0.01, 0.02, 0.05),
    ),
    Gate("srm", "pass", "no mismatch", RatioChecked(0.42)),
    Gate(
        "samples",
        "hold",
        "300 of 1,000",
        Samples(
            {"control": 300, "treatment": 280},
            {"control": 1000, "treatment": 1000},
            "accuracy",
            sizing=(Sized("accuracy", 0.02, 1000, 1000, 1200.0), TooFewToSize("latency", 4, 10)),
            users=Reach(
                {"control": 250.4, "treatment": 240.0},
                {"control": 900, "treatment": 900},
                {"control": 0.01, "treatment": 0.01},
                {"control": 700.2, "treatment": 690.0},
                None,
                False,
            ),
        ),
    ),
    Gate(
        "samples",
        "pass",
        "enough",
        Samples(
            {"control": 5, "treatment": 5},
            {"control": 5, "treatment": 5},
            None,
            by_metric={"accuracy": {"control": 5, "treatment": 5}},
        ),
    ),
)


def test_each_gate_encodes_as_its_numbers_said() -> None:
    entries = gate_entries(GATES)
    assert [type(e).__name__ for e in entries] == [
        "PlainGate",
        "HarmGate",
        "LimitGate",
        "RatioGate",
        "SamplesGate",
        "SamplesGate",
    ]
    assert isinstance(entries[1], HarmGate)
    assert entries[1].n.treatment == 41
    assert isinstance(entries[4], SamplesGate)
    assert entries[4].users is not None
    encoded = TypeAdapter(list[GateEntry]).dump_python(entries, mode="json")
    assert encoded == [gate.as_json() for gate in GATES]


def test_history_entries_answered_as_recorded() -> None:
    decided: dict[str, Any] = {
        "time": 1.5,
        "experiment": "e",
        "actor": "controller",
        "state": "running",
        "transition": None,
        "change": None,
        "stage": 1,
        "decision": "hold",
        "reason": "samples",
        "inputs": {"decision": "hold", "gates": []},
    }
    event = {  # from Flagger: no state, change or stage
        "time": 2.0,
        "experiment": "e",
        "actor": "flagger",
        "transition": None,
        "decision": "event",
        "reason": "flagger event",
        "inputs": {"name": "podinfo"},
        "recorded_by": "an older version",
    }
    history = RolloutHistoryAnswer.model_validate({"experiment": "e", "history": [decided, event]})
    encoded = history.model_dump(mode="json", exclude_unset=True)
    assert encoded == {"experiment": "e", "history": [decided, event]}


def _result(*, tested: bool) -> MetricResult:
    fixed = frequentist.TestResult(
        "welch_t", 0.04, 0.95, True, 0.1, 0.2, (0.01, 0.19), (0.02, 0.38), 50, 60
    )
    return MetricResult(
        "continuous",
        "higher",
        50,
        60,
        0.5,
        0.6,
        0.2,
        "ok" if tested else "not enough data: 1 sample",
        fixed=fixed if tested else None,
        sequential=fixed if tested else None,
        p_value_holm=0.08 if tested else None,
    )


def test_a_metric_without_its_tests_has_no_test_fields() -> None:
    for tested in (True, False):
        result = _result(tested=tested)
        encoded = MetricReportAnswer.of(result).model_dump(mode="json")
        assert encoded == result.as_json()
        assert ("fixed" in encoded) is tested


def test_health_components_encode_as_reported() -> None:
    report: dict[str, Any] = {
        "overall_health": "degraded",
        "components": {
            "upstreams": {
                "ml": {
                    "status": "degraded",
                    "breaker": "half_open",
                    "error_rate": 0.0,
                    "calls_in_window": 3,
                    "active_check": {"ok": True, "detail": "200", "at": 5.0},
                    "reasons": ["breaker half-open: trial calls in progress"],
                    "critical": False,
                }
            },
            "flag_store": {"status": "healthy", "backend": "memory", "reasons": []},
            "config": {"status": "healthy", "source": "a.yaml", "loaded_at": 1.0, "reasons": []},
        },
        "ml_components": [
            {"name": "ml", "kind": "ml_upstream", "status": "degraded", "reasons": ["half-open"]}
        ],
    }
    assert AggregateAnswer.model_validate(report).model_dump(mode="json") == report


SHADOW: dict[str, Any] = {  # an experiment's shadow as the data plane reports it
    "experiment": "exp",
    "total_decisions": 10,
    "agreements": 5,
    "disagreements": 5,
    "agreement_rate": 0.5,
    "errors": 0,
    "dropped": {"max_in_flight": 0, "breaker_open": 20},
    "dropped_in_a_row": 20,
    "in_flight": 0,
    "latency_mean_ms": {"control": 1.5, "treatment": None},
    "recent_disagreements": [
        {
            "differences": {
                "status": {"control": 200, "treatment": 500},
                "$.label": {"control": ["a", 1.5], "treatment": None},
            },
            "latency_ms": {"control": 1.2, "treatment": 3.4},
        },
        {"differences": {"body": "not JSON"}, "latency_ms": {"control": 1.0, "treatment": 2.0}},
    ],
}


def test_shadow_stats_encode_as_the_data_plane_reports_them() -> None:
    stats = ShadowStatsAnswer(
        experiments=[ShadowExperimentStats.model_validate(SHADOW)],
        total_decisions=10,
        agreements=5,
        disagreements=5,
        errors=0,
        agreement_rate=0.5,
    )
    assert stats.model_dump(mode="json")["experiments"] == [SHADOW]


def test_each_ml_component_encodes_as_listed() -> None:
    """Every kind the ML side lists, as health_api.ml_components builds it: an ML upstream
    with its breaker (one the data plane did not report: no status, its breaker "None"), a
    shadow as the data plane reports it (dropping: degraded), the worker and controller."""
    upstreams = {"control": "http://127.0.0.1:1", "treatment": "http://127.0.0.1:2"}
    components: dict[str, object] = {
        "upstreams": {
            "treatment": {"status": "degraded", "breaker": "half_open", "reasons": ["trial"]}
        },
        "statistics_worker": {"status": "healthy", "reasons": []},
        "rollout_controller": {"status": "degraded", "reasons": ["exp: store away"]},
    }
    for config in (make_config(upstreams), None):
        listed = ml_components(config, [SHADOW, {**SHADOW, "agreement_rate": None}], components)
        report = {"overall_health": "degraded", "components": {}, "ml_components": listed}
        report["components"] = {
            "flag_store": {"status": "healthy", "backend": "memory", "reasons": []}
        }
        encoded = AggregateAnswer.model_validate(report).model_dump(mode="json")
        assert encoded["ml_components"] == listed
    listed = ml_components(make_config(upstreams), [SHADOW], components)
    assert [c["kind"] for c in listed] == [  # type: ignore[index]
        "ml_upstream",
        "breaker",
        "shadow",
        "statistics_worker",
        "rollout_controller",
    ]
    away = ml_components(make_config(upstreams), [], {})
    assert away == [
        {"name": "treatment", "kind": "ml_upstream", "status": None, "reasons": []},
        {"name": "treatment breaker", "kind": "breaker", "status": "unhealthy", "state": "None"},
    ]
    encoded = AggregateAnswer.model_validate(
        {"overall_health": "unhealthy", "components": report["components"], "ml_components": away}
    ).model_dump(mode="json")
    assert encoded["ml_components"] == away


def test_timeline_events_encode_as_recorded() -> None:
    """A controller's entry (its inputs and experiment left out) and one read back from
    PostgreSQL (no stage; decision and reason may be null there)."""
    decided = {
        "time": 1.5,
        "actor": "controller",
        "state": "running",
        "transition": "running",
        "change": "0% -> 5%",
        "stage": 0,
        "decision": "start",
        "reason": "ship",
    }
    answered = [decided, {**dict.fromkeys(decided), "time": 2.0, "actor": "flagger"}]
    series = Series()
    series.events.append(event_of({**answered[0], "experiment": "exp", "inputs": {"plan": {}}}))
    series.events.append(event_of({k: v for k, v in answered[1].items() if k != "stage"}))
    served = series_json("exp", {"control": "a", "treatment": "b"}, series, (0.1, 1.0), [])
    assert served["events"] == answered
    assert TimelineAnswer.model_validate(served).model_dump(mode="json") == served


def _measured(
    metric: str,
    direction: str,
    means: tuple[float, float],
    improvement: float,
    interval: tuple[float, float],
    mean_interval: tuple[float, float] | None = None,
) -> Evidence:
    """A metric on phase 3 with 40 and 42 samples."""
    control, treatment = means
    return Evidence(
        metric,
        "continuous",
        direction,
        (3,),
        40,
        42,
        control,
        treatment,
        improvement=improvement,
        improvement_interval=interval,
        treatment_interval=mean_interval,
    )


def test_final_assessment_details_encode_as_before() -> None:
    """Each flat field's detail: an improvement's (and time_savings') interval in % with both
    arms' samples, a score's the treatment's interval and samples; none for the error rate."""
    metrics = [
        _measured("latency", "lower", (0.2, 0.15), 0.25, (0.1, 0.4), (0.1, 0.2)),
        _measured("error", "lower", (0.1, 0.05), 0.5, (-0.2, 0.9)),
        _measured("accuracy", "higher", (0.6, 0.7), 0.25, (0.05, 0.5), (0.6, 0.8)),
        Evidence("revenue", "continuous", "higher", (), 1, 0, 2.0, None, "not enough data"),
    ]
    evidence = EvidenceReport(
        "exp", "control", "treatment", "current phase", (), {m.metric: m for m in metrics}
    )
    flat, details = assessment(evidence)
    assert flat == {
        "time_savings": 25.0,
        "accuracy_improvement": 25.0,
        "accuracy_score": 0.7,
        "revenue_improvement": None,
        "revenue_score": None,
    }
    answered = FinalAssessmentAnswer.model_validate(
        {
            "experiment": "exp",
            "rollout_state": None,
            "percentage": 5.0,
            "metrics": {},
            **flat,
            "details": details,
            "evidence": {"basis": "current phase", "phases": [], "alpha": 0.05, "primary": None},
        }
    ).model_dump(mode="json")
    both = {"control": 40, "treatment": 42}
    assert answered["details"] == {
        "time_savings": {"metric": "latency", "interval": [10.0, 40.0], "n": both},
        "accuracy_improvement": {"metric": "accuracy", "interval": [5.0, 50.0], "n": both},
        "accuracy_score": {
            "metric": "accuracy",
            "arm": "treatment",
            "interval": [0.6, 0.8],
            "n": 42,
        },
        "revenue_improvement": {
            "metric": "revenue",
            "interval": None,
            "n": {"control": 1, "treatment": 0},
        },
        "revenue_score": {"metric": "revenue", "arm": "treatment", "interval": None, "n": 0},
    }
    assert {k: answered[k] for k in flat} == flat
