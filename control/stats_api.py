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

from abgate.config.fields import shown
from abgate.control.current import require_worker, resolve
from abgate.control.evidence_payloads import EvidenceAnswer
from abgate.control.http import ApiError
from abgate.control.payloads import answer, read_object, validate
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
from abgate.control.stats.power import mean_detectable_effect, rate_detectable_effect
from abgate.control.stats.sequential import sequential_rates, sequential_sample_size
from abgate.control.stats_payloads import (
    MAX_POWER,
    FixedSampleSize,
    InlineTestAnswer,
    LiveTestAnswer,
    LiveTestBody,
    MeansSampleSizeBody,
    ProportionTestBody,
    RatesSampleSizeBody,
    SampleSizeAnswer,
    SequentialSampleSize,
    SizeOptions,
    WelchTestBody,
)
from abgate.control.summary_bounds import MAX_N


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
    data = await read_object(request)
    live_only = sorted({"metric", "cohort_a", "cohort_b"} & set(data))
    inline = "test" in data or not {"a", "b"}.isdisjoint(data)
    if "experiment" in data or not inline:  # `{}` too: as GET, the current experiment
        return await live_test(request, validate(LiveTestBody, data))
    if live_only:
        raise ApiError(
            400,
            f"test: give test, a and b (inline summaries), or leave test out for a test on "
            f"live data ({', '.join(live_only)} apply only there)",
        )
    test = data.get("test")
    body: WelchTestBody | ProportionTestBody
    if test == "welch_t":
        body = validate(WelchTestBody, data)
    elif test == "two_proportion":
        body = validate(ProportionTestBody, data)
    else:
        raise ApiError(400, "test: expected welch_t or two_proportion")
    if body.sequential and body.alternative != "two-sided":
        raise ApiError(400, "alternative: the sequential test is two-sided")
    alpha, alternative = body.alpha, body.alternative
    try:
        if isinstance(body, WelchTestBody):
            a = SampleMean.of("a", body.a.n, body.a.mean, body.a.std)
            b = SampleMean.of("b", body.b.n, body.b.mean, body.b.std)
            if body.sequential:
                result = sequential_test(a, b, alpha=alpha)
            else:
                result = welch_t(a, b, alpha=alpha, alternative=alternative)
            detectable = mean_detectable_effect(a.variance, b.variance, a.n, b.n, alpha=alpha)
            no_variance = "no variance in the data"
        else:
            pa = Proportion.of("a", body.a.n, body.a.successes)
            pb = Proportion.of("b", body.b.n, body.b.successes)
            if body.sequential:
                result = sequential_rates(pa, pb, alpha=alpha)
            else:
                result = rates_test(pa, pb, alpha=alpha, alternative=alternative)
            detectable = rate_detectable_effect(pa.rate, pa.n, pb.n, alpha=alpha)
            no_variance = f"no variance in the data (a's rate, which sizes it, is {pa.rate:g})"
    except StatsInputError as exc:
        raise ApiError(400, str(exc)) from None
    except ArithmeticError as exc:  # overflow or underflow the bounds above did not foresee
        raise ApiError(
            400, f"a, b: no finite result for these summaries ({type(exc).__name__})"
        ) from None
    payload = _finite_json(result)
    payload["minimum_detectable_effect"] = (
        {"absolute": detectable, "power": 0.8}
        if detectable > 0  # 0 would claim any effect is detectable
        else {"absolute": None, "power": 0.8, "reason": no_variance}
    )
    return answer(InlineTestAnswer.model_validate(payload))


async def sample_size(request: web.Request) -> web.Response:
    data = await read_object(request)
    body: MeansSampleSizeBody | RatesSampleSizeBody
    if "effect_size" in data:
        body = validate(MeansSampleSizeBody, data)
    elif "baseline_rate" in data:
        body = validate(RatesSampleSizeBody, data)
    else:
        validate(SizeOptions, data)  # a bad option is named before the missing effect
        raise ApiError(400, "effect_size or baseline_rate: one is required")
    alpha, power, share = body.alpha, body.power, body.treatment_share
    if not alpha < power:  # its other bounds: the body's (stats_payloads.Power)
        raise ApiError(
            400,
            f"power: expected a number above alpha ({alpha:g}) and below {MAX_POWER!r}, "
            f"got {shown(power)}",
        )
    try:
        if isinstance(body, MeansSampleSizeBody):
            effect, field, variances = body.effect_size, "effect_size", (1.0, 1.0)
            per_arm = mean_sample_size(effect, power, alpha)
            kind = "means (Cohen's d, two-sided Welch/Student t)"
        else:
            baseline, effect = body.baseline_rate, body.minimum_detectable_effect
            field, target = "minimum_detectable_effect", baseline + effect
            per_arm = proportion_sample_size(baseline, effect, power, alpha)
            variances = (baseline * (1 - baseline), target * (1 - target))
            kind = "rates (Cohen's h, two-sided z)"
        sequential = _sequential_size(effect, field, variances, share, power, alpha)
    except StatsInputError as exc:
        raise ApiError(400, str(exc)) from None
    except (ArithmeticError, ValueError) as exc:  # a root the solver could not bracket
        raise ApiError(
            400, f"no sample size can be computed for this input ({type(exc).__name__})"
        ) from None
    # The gates decide with the sequential test: its size is the one to plan a stage by.
    return answer(
        SampleSizeAnswer(
            minimum_sample_size=per_arm,
            minimum_sample_size_unit="per arm (fixed horizon, equal arms)",
            sample_size=FixedSampleSize(per_arm=per_arm, total=2 * per_arm),
            sequential=SequentialSampleSize(
                control=sequential[0],
                treatment=sequential[1],
                total=sum(sequential),
                treatment_share=share,
            ),
            power=power,
            alpha=alpha,
            kind=kind,
        )
    )


def _sequential_size(
    effect: float,
    field: str,
    variances: tuple[float, float],
    share: float,
    power: float,
    alpha: float,
) -> tuple[int, int]:
    """The sequential test's samples (control, treatment); one it cannot reach within MAX_N
    blamed on the field that makes it so: the treatment share when equal arms would do."""
    try:
        return sequential_sample_size(effect, *variances, share=share, power=power, alpha=alpha)
    except StatsInputError as exc:
        if exc.field != "effect":
            raise
        too_small = StatsInputError(field, exc.message)
    if share == 0.5:
        raise too_small
    try:  # is it the share? equal arms reach it
        sequential_sample_size(effect, *variances, power=power, alpha=alpha)
    except StatsInputError:
        raise too_small from None
    raise StatsInputError(
        "treatment_share",
        f"{shown(share)} leaves the smaller arm too few samples: the sequential test would "
        f"need over {MAX_N:,} samples (equal arms would not)",
    )


async def live_test(request: web.Request, body: LiveTestBody) -> web.Response:
    """Live data: {"experiment"?, "metric"?, "cohort_a"?, "cohort_b"?} on the comparison of
    record (control/evidence.py): the current phase while a stage runs, the rollout's earlier
    phases with both arms once it is at 100% or rolled back. Without an experiment, the
    current one; without a metric, its plan's primary."""
    from abgate.control.evidence_api import evidence_of

    worker = require_worker(request)
    name = await resolve(request.app, body.experiment)
    experiment = worker.config.experiments[name]
    arms = (experiment.control.name, experiment.treatment.name)
    cohort_a = arms[0] if body.cohort_a is None else body.cohort_a
    cohort_b = arms[1] if body.cohort_b is None else body.cohort_b
    for field, cohort in (("cohort_a", cohort_a), ("cohort_b", cohort_b)):
        if cohort not in arms:
            raise ApiError(400, f"{field}: expected one of {', '.join(arms)}, got {shown(cohort)}")
    if cohort_a == cohort_b:
        raise ApiError(400, "cohort_b: compare two different arms")
    sequential = body.sequential
    evidence = await evidence_of(request, name, body.alpha)
    metric = evidence.primary if body.metric is None else body.metric
    if metric is None:
        raise ApiError(400, f"metric: required ({name} has no rollout plan with a primary metric)")
    definition = experiment.metric(metric)
    if definition is None:
        raise ApiError(
            400,
            f"metric: {shown(metric)} is not declared for {name} (declared: "
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
    return answer(
        LiveTestAnswer.model_validate(
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
                "evidence": EvidenceAnswer.of(evidence),
                "note": CONFIDENCE_NOTE,
            }
        )
    )


CONFIDENCE_NOTE = (
    "confidence_level is 1 - p_value: the highest level at which this test's interval "
    "excludes no difference (Optimizely's 'statistical significance'); the interval in ci "
    "is at interval_level = 1 - alpha"
)


async def current_test(request: web.Request) -> web.Response:
    """GET: the current experiment's primary metric, control against treatment."""
    return await live_test(request, LiveTestBody())


def add_stats_routes(app: web.Application) -> None:
    app.router.add_post("/api/statistics/significance-test", significance_test)
    app.router.add_get("/api/statistics/significance-test", current_test)
    app.router.add_post("/api/statistics/sample-size", sample_size)
