"""Statistics endpoints on inline summaries and on live data:

    POST /api/statistics/significance-test
        {"test": "welch_t", "a": {"n", "mean", "std"}, "b": {...}}
        {"test": "two_proportion", "a": {"n", "successes"}, "b": {...}}
        optional "alpha" (0.05), "alternative" (two-sided | greater | less), "sequential"
        {"experiment"?, "metric"?, "cohort_a"?, "cohort_b"?}: live, the current experiment
        and its primary metric by default
    GET  /api/statistics/significance-test
        the current experiment's primary metric, control against treatment
    POST /api/statistics/sample-size
        {"effect_size": 0.1, "power": 0.8, "alpha": 0.05}            (Cohen's d, means)
        {"baseline_rate": 0.1, "minimum_detectable_effect": 0.02, ...} (rates)

Degenerate input is a 400 naming the field; no NaN is ever returned.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from abgate.control.current import require_worker, resolve
from abgate.control.http import ApiError, json_object, json_response
from abgate.control.stats import (
    Proportion,
    SampleMean,
    StatsInputError,
    mean_sample_size,
    proportion_sample_size,
    sequential_test,
    welch_t,
)
from abgate.control.stats.frequentist import TestResult, rates_test
from abgate.control.stats.models import Alternative
from abgate.control.stats.power import mean_detectable_effect, rate_detectable_effect
from abgate.control.stats.sequential import sequential_rates, sequential_sample_size

ALTERNATIVES: tuple[Alternative, ...] = ("two-sided", "greater", "less")


ALPHA_RANGE = (1e-10, 0.5)  # beyond: nothing a rollout would use, and numerically fragile


def _alpha(body: dict[str, Any]) -> float:
    return _number(body, "alpha", 0.05, *ALPHA_RANGE)


def _number(body: dict[str, Any], field: str, default: float, low: float, high: float) -> float:
    value = body.get(field, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low < value < high
    ):
        raise ApiError(
            400, f"{field}: expected a number between {low:g} and {high:g}, got {value!r}"
        )
    return float(value)


def _arm(body: dict[str, Any], field: str, keys: tuple[str, ...]) -> dict[str, Any]:
    arm = body.get(field)
    if not isinstance(arm, dict):
        raise ApiError(400, f"{field}: expected an object with {', '.join(keys)}")
    unknown = sorted(set(arm) - set(keys))
    if unknown:
        raise ApiError(400, f"{field}: unknown field(s) {', '.join(unknown)}")
    missing = [k for k in keys if k not in arm]
    if missing:
        raise ApiError(400, f"{field}.{missing[0]}: required")
    return arm


def _finite_json(result: TestResult) -> dict[str, Any]:
    payload = result.as_json()

    def check(value: Any, path: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ApiError(400, f"{path}: the input gives no finite result")
        if isinstance(value, dict):
            for key, item in value.items():
                check(item, f"{path}.{key}" if path else key)
        if isinstance(value, list):
            for item in value:
                check(item, path)

    check(payload, "")
    return payload


async def significance_test(request: web.Request) -> web.Response:
    body = await json_object(
        request,
        allowed={
            "test",
            "a",
            "b",
            "alpha",
            "alternative",
            "sequential",
            "experiment",
            "metric",
            "cohort_a",
            "cohort_b",
        },
    )
    if "experiment" in body or (
        {"metric", "cohort_a", "cohort_b"} & set(body) and "test" not in body
    ):
        return await live_test(request, body)  # no experiment named: the current one
    live_only = sorted({"metric", "cohort_a", "cohort_b"} & set(body))
    if live_only:
        raise ApiError(
            400,
            f"test: give test, a and b (inline summaries), or leave test out for a test on "
            f"live data ({', '.join(live_only)} apply only there)",
        )
    alpha = _alpha(body)
    alternative = body.get("alternative", "two-sided")
    if alternative not in ALTERNATIVES:
        raise ApiError(400, f"alternative: expected one of {', '.join(ALTERNATIVES)}")
    sequential = body.get("sequential", False)
    if not isinstance(sequential, bool):
        raise ApiError(400, "sequential: expected true or false")
    test = body.get("test")
    try:
        if test == "welch_t":
            a_in, b_in = (_arm(body, f, ("n", "mean", "std")) for f in ("a", "b"))
            a = SampleMean.of("a", a_in["n"], a_in["mean"], a_in["std"])
            b = SampleMean.of("b", b_in["n"], b_in["mean"], b_in["std"])
            if sequential:
                if alternative != "two-sided":
                    raise ApiError(400, "alternative: the sequential test is two-sided")
                result = sequential_test(a, b, alpha=alpha)
            else:
                result = welch_t(a, b, alpha=alpha, alternative=alternative)
            detectable = mean_detectable_effect(a.variance, b.variance, a.n, b.n, alpha=alpha)
        elif test == "two_proportion":
            a_in, b_in = (_arm(body, f, ("n", "successes")) for f in ("a", "b"))
            pa = Proportion.of("a", a_in["n"], a_in["successes"])
            pb = Proportion.of("b", b_in["n"], b_in["successes"])
            if sequential:
                if alternative != "two-sided":
                    raise ApiError(400, "alternative: the sequential test is two-sided")
                result = sequential_rates(pa, pb, alpha=alpha)
            else:
                result = rates_test(pa, pb, alpha=alpha, alternative=alternative)
            detectable = rate_detectable_effect(pa.rate, pa.n, pb.n, alpha=alpha)
        else:
            raise ApiError(400, "test: expected welch_t or two_proportion")
    except StatsInputError as exc:
        raise ApiError(400, str(exc)) from None
    except ArithmeticError as exc:  # overflow or underflow the bounds above did not foresee
        raise ApiError(
            400, f"a, b: no finite result for these summaries ({type(exc).__name__})"
        ) from None
    payload = _finite_json(result)
    # Not the power at the observed effect (a restatement of the p-value): the effect that
    # these sample sizes would detect with 80% power.
    payload["minimum_detectable_effect"] = {"absolute": detectable, "power": 0.8}
    return json_response(payload)


async def sample_size(request: web.Request) -> web.Response:
    body = await json_object(
        request,
        allowed={
            "effect_size",
            "baseline_rate",
            "minimum_detectable_effect",
            "power",
            "alpha",
            "treatment_share",
        },
    )
    alpha = _alpha(body)
    power = _number(body, "power", 0.8, alpha, 1 - 1e-9)
    share = _number(body, "treatment_share", 0.5, 0, 1)
    try:
        if "effect_size" in body:
            effect = _number(body, "effect_size", 0, -1e3, 1e3)
            per_arm = mean_sample_size(effect, power, alpha)
            sequential = sequential_sample_size(
                effect, 1.0, 1.0, share=share, power=power, alpha=alpha
            )
            kind = "means (Cohen's d, two-sided Welch/Student t)"
        elif "baseline_rate" in body:
            baseline = _number(body, "baseline_rate", 0, 0, 1)
            mde = _number(body, "minimum_detectable_effect", 0, -1, 1)
            per_arm = proportion_sample_size(baseline, mde, power, alpha)
            target = baseline + mde
            sequential = sequential_sample_size(
                mde,
                baseline * (1 - baseline),
                target * (1 - target),
                share=share,
                power=power,
                alpha=alpha,
            )
            kind = "rates (Cohen's h, two-sided z)"
        else:
            raise ApiError(400, "effect_size or baseline_rate: one is required")
    except StatsInputError as exc:
        raise ApiError(400, str(exc)) from None
    except (ArithmeticError, ValueError) as exc:  # a root the solver could not bracket
        raise ApiError(
            400, f"no sample size can be computed for this input ({type(exc).__name__})"
        ) from None
    # The gates decide with the sequential test: its size is the one to plan a stage by.
    return json_response(
        {
            "minimum_sample_size": per_arm,
            "minimum_sample_size_unit": "per arm (fixed horizon, equal arms)",
            "sample_size": {"per_arm": per_arm, "total": 2 * per_arm},
            "sequential": {
                "control": sequential[0],
                "treatment": sequential[1],
                "total": sum(sequential),
                "treatment_share": share,
            },
            "power": power,
            "alpha": alpha,
            "for": kind,
        }
    )


async def live_test(request: web.Request, body: dict[str, Any]) -> web.Response:
    """Live data: {"experiment"?, "metric"?, "cohort_a"?, "cohort_b"?} on the comparison of
    record (control/evidence.py): the current phase while a stage runs, the rollout's earlier
    phases with both arms once it is at 100% or rolled back. Without an experiment, the
    current one; without a metric, its plan's primary."""
    from abgate.control.evidence_api import evidence_of

    worker = require_worker(request)
    name = await resolve(request.app, body.get("experiment"))
    experiment = worker.config.experiments[name]
    arms = (experiment.control.name, experiment.treatment.name)
    cohort_a = body.get("cohort_a", arms[0])
    cohort_b = body.get("cohort_b", arms[1])
    for field, cohort in (("cohort_a", cohort_a), ("cohort_b", cohort_b)):
        if cohort not in arms:
            raise ApiError(400, f"{field}: expected one of {', '.join(arms)}, got {cohort!r}")
    if cohort_a == cohort_b:
        raise ApiError(400, "cohort_b: compare two different arms")
    sequential = body.get("sequential", True)
    if not isinstance(sequential, bool):
        raise ApiError(400, "sequential: expected true or false")
    evidence = await evidence_of(request, name, _alpha(body) if "alpha" in body else None)
    metric = body.get("metric", evidence.primary)
    if not isinstance(metric, str):
        raise ApiError(400, f"metric: required ({name} has no rollout plan with a primary metric)")
    definition = experiment.metric(metric)
    if definition is None:
        raise ApiError(
            400,
            f"metric: {metric!r} is not declared for {name} (declared: "
            f"{', '.join(m.name for m in experiment.metrics) or 'none'}; "
            "built in: latency, error)",
        )
    result = evidence.metrics[metric]
    if result.p_value is None or result.effect is None or result.ci is None:
        raise ApiError(400, f"metric: {result.status} ({evidence.basis})")
    flip = cohort_a == arms[1]  # b - a, as asked: treatment first reverses the sign
    sign = -1.0 if flip else 1.0
    low, high = sorted((sign * result.ci[0], sign * result.ci[1]))
    n = (result.n_control, result.n_treatment)
    means = (result.mean_control, result.mean_treatment)
    p_value = result.p_value if sequential else result.p_value_fixed
    assert p_value is not None
    base = means[1] if flip else means[0]
    return json_response(
        {
            "test": "sequential" if sequential else "fixed (z, precision-weighted)",
            "p_value": p_value,
            "confidence_level": 1 - p_value,
            "alpha": evidence.alpha,
            "interval_level": 1 - evidence.alpha,
            "significant": p_value < evidence.alpha,
            "effect": {
                "absolute": sign * result.effect,
                "relative": sign * result.effect / abs(base) if base else None,
            },
            "ci": {"absolute": [low, high]},
            "n": {"a": n[1] if flip else n[0], "b": n[0] if flip else n[1]},
            "sample_size": result.sample_size,
            "mean": {"a": means[1] if flip else means[0], "b": means[0] if flip else means[1]},
            "p_value_sequential": result.p_value,
            "p_value_fixed": result.p_value_fixed,
            "power": result.power,
            "metric": metric,
            "experiment": name,
            "phase": evidence.phases[-1].id,
            "type": definition.type,
            "direction": definition.direction,
            "cohorts": {"a": cohort_a, "b": cohort_b},
            "evidence": evidence.as_json(),
            "note": CONFIDENCE_NOTE,
        }
    )


CONFIDENCE_NOTE = (
    "confidence_level is 1 - p_value: the highest level at which this test's interval "
    "excludes no difference (Optimizely's 'statistical significance'); the interval in ci "
    "is at interval_level = 1 - alpha"
)


async def current_test(request: web.Request) -> web.Response:
    """GET: the current experiment's primary metric, control against treatment."""
    return await live_test(request, {})


def add_stats_routes(app: web.Application) -> None:
    app.router.add_post("/api/statistics/significance-test", significance_test)
    app.router.add_get("/api/statistics/significance-test", current_test)
    app.router.add_post("/api/statistics/sample-size", sample_size)
