"""The settings of a rollout plan (`experiments.NAME.rollout`, or a plan given to the control
API), each declared once (see `config.settings`). Checks across stages, the holdout and
alpha/power run with the plan, in `config.parse_rollout`."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import PlainValidator, TypeAdapter, ValidationInfo, WrapValidator
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

from abgate.config.fields import Invalid, shown
from abgate.config.model import DEFAULT_HOLDOUT, Amount
from abgate.config.schema_experiments import PERCENTAGE, percentage_bp
from abgate.config.settings import Section, setting
from abgate.config.values import BOOLEAN, Names, before, checked, number, refuse
from abgate.config.values import duration as seconds  # a setting is named duration

DEFAULT_STAGES = (5, 25, 50, 75, 100)
YEAR = 365 * 86_400.0
LATENCY_SLO = re.compile(r"^latency_p(\d{1,2}(?:\.\d+)?)$")


def amount(value: Any) -> Amount:
    """A number (absolute) or 'N%' (relative to the control mean); positive."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = float(value.strip()[:-1])
        except ValueError:
            number = math.nan
        if math.isfinite(number) and 0 < number <= 1000:
            return Amount(number / 100, True)
    elif (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    ):
        return Amount(float(value), False)
    raise Invalid(f"expected a positive number or a percentage such as '10%', got {shown(value)}")


def _fraction(high: float) -> PlainValidator:
    def check(value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise Invalid(f"expected a number, got {shown(value)}")
        if not 0 < value <= high:
            raise Invalid(f"must be above 0 and at most {high:g}, got {value:g}")
        return float(value)

    return checked(check)


def _metric(value: Any, info: ValidationInfo) -> str:
    names = info.context
    assert isinstance(names, Names)
    if not isinstance(value, str) or value not in names.metrics:
        raise refuse(f"not a metric of this experiment: {shown(value)}")
    return str(value)


METRIC = PlainValidator(_metric)


def _required(what: str) -> Any:
    def check(value: Any) -> Any:
        if value is None:
            raise Invalid(f"required: {what}")
        return value

    return before(check)


class LoadTestSection(Section):
    requests_per_second: Annotated[
        float, number(low=0, high=100_000, low_open=True, message="between 0 and 100000")
    ] = setting(100, "the load test's open-loop rate")
    duration: Annotated[float, seconds(high=3600)] = setting("60s", "how long it runs")
    p95_max: Annotated[float, seconds(high=60)] = setting(
        "100ms", "the stage passes when its 95th percentile latency is at most this"
    )


class StageSection(Section):
    percentage: Annotated[int, PERCENTAGE, _required("the stage's percentage")] = setting(
        None, "the treatment's share at this stage", shown="required"
    )
    approval: Annotated[bool, BOOLEAN] = setting(
        False, "a person approves before the rollout moves to this stage"
    )
    min_duration: Annotated[float | None, seconds(high=YEAR, optional=True)] = setting(
        None, "this stage runs at least this long", shown="the plan's"
    )
    load_test: LoadTestSection | None = setting(
        None, "a load test the stage must pass before it may be promoted"
    )


def _stage(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A percentage alone is the stage at that percentage (refused at the stage's place)."""
    if isinstance(value, dict):
        return handler(value)
    try:
        percentage_bp(value)
    except Invalid as exc:
        raise refuse(str(exc)) from None
    return handler({"percentage": value})


def _stages(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        raise Invalid("expected a list of percentages such as [5, 25, 50, 75, 100]")
    return value


class PrimarySection(Section):
    metric: Annotated[str, METRIC] = setting(
        None, "the metric the rollout is for", shown="required"
    )
    minimum_detectable_effect: Annotated[
        Amount, checked(amount), _required("the smallest effect to detect")
    ] = setting(
        None,
        "the smallest effect to detect (`0.02`, or `5%` of the control mean; on a binary "
        "metric under 1, and under 100% where higher is better)",
        shown="required",
    )
    allow_unmeasured: Annotated[bool, BOOLEAN] = setting(
        False, "promote without the primary's planned sample (a declared choice)"
    )
    margin: Annotated[Amount | None, checked(amount, optional=True)] = setting(
        None,
        "how much worse it may be and still be non-inferior",
        shown="its guardrail's, else 3/4 of the effect",
    )


class GuardrailSection(Section):
    metric: Annotated[str, METRIC] = setting(None, "a metric", shown="required")
    margin: Annotated[Amount, checked(amount), _required("how much worse it may be")] = setting(
        None,
        "how much worse the treatment may be and still count as no harm",
        shown="required",
    )


def _guardrails(value: Any) -> Any:
    if value is not None and not isinstance(value, list):
        raise Invalid("expected a list of {metric, margin}")
    return value


def _slo(value: Any) -> Any:
    if value is not None and not isinstance(value, dict):
        raise Invalid("expected a mapping such as {latency_p95: 100ms, error_rate: 1%}")
    return {} if value is None else value


def _slo_key(value: Any) -> str:
    if value != "error_rate" and not LATENCY_SLO.match(str(value)):
        raise Invalid("unknown key (expected latency_pNN such as latency_p95, or error_rate)")
    return str(value)


def _holdout(value: Any) -> Any:
    """true (the default share), false (none), or {percentage: N}."""
    if value is True:
        return {"percentage": DEFAULT_HOLDOUT.percentage_bp / 100}
    return None if value is False else value


class HoldoutSection(Section):
    percentage: Annotated[int, PERCENTAGE, _required("the control share kept, such as 5")] = (
        setting(None, "the control share kept at the last stage", shown="required")
    )


class PlanSection(Section):
    stages: Annotated[
        tuple[Annotated[StageSection, WrapValidator(_stage)], ...], before(_stages)
    ] = setting(list(DEFAULT_STAGES), "the treatment's share at each stage; the last is 100")
    min_duration: Annotated[float, seconds(high=YEAR)] = setting(
        "1h", "each stage runs at least this long before it may be promoted"
    )
    max_hold: Annotated[float, seconds(high=YEAR)] = setting(
        "1d", "a stage that cannot decide for this long goes to a person"
    )
    tick: Annotated[float, seconds(high=3600)] = setting("10s", "how often the controller decides")
    primary: PrimarySection | None = setting(None, "the metric the rollout is for")
    guardrails: Annotated[tuple[GuardrailSection, ...] | None, before(_guardrails)] = setting(
        None,
        "metrics that must show no harm",
        shown="`error` (margin 0.005) and `latency` (10%)",
    )
    slo: Annotated[dict[Annotated[str, checked(_slo_key)], Any], before(_slo)] = setting(
        {}, "absolute limits on the treatment: `{latency_p95: 100ms, error_rate: 1%}`"
    )
    alpha: Annotated[float, _fraction(0.5)] = setting(0.05, "the tests' false-alarm rate")
    power: Annotated[float, _fraction(0.999)] = setting(
        0.8, "the chance to detect the minimum effect (above alpha)"
    )
    bake: Annotated[float, seconds(high=YEAR)] = setting(
        "1d", "the last stage runs this long (its holdout compared) before completion"
    )
    breaker_grace: Annotated[float, seconds(high=YEAR)] = setting(
        "30s", "the treatment's breaker open longer than this: rollback"
    )
    holdout: Annotated[HoldoutSection | None, before(_holdout)] = setting(
        None,
        "`{percentage: N}` kept on control through the last stage's bake, `true` (5%) or `false`",
        shown="5% with a primary metric",
    )


PLAN = TypeAdapter(PlanSection)
