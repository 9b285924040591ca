"""`experiments.NAME.rollout`: the staged rollout plan, validated with the rest of the config
(and, through `parse_plan`, when a plan is given to the control API)."""

from __future__ import annotations

import math
import re
from typing import Any

from abgate.config.errors import ConfigError
from abgate.config.fields import Reader
from abgate.config.metrics_catalogue import BUILT_IN_METRIC_NAMES
from abgate.config.model import (
    DEFAULT_GUARDRAILS,
    DEFAULT_HOLDOUT,
    Amount,
    GuardrailConfig,
    HoldoutConfig,
    LoadTestConfig,
    MetricConfig,
    PrimaryConfig,
    RolloutPlan,
    SloConfig,
    StageConfig,
)
from abgate.config.yaml_lines import KeyPath, LocatedDocument

DEFAULT_STAGES = (5, 25, 50, 75, 100)
_KEYS = {
    "stages",
    "min_duration",
    "max_hold",
    "tick",
    "primary",
    "guardrails",
    "slo",
    "alpha",
    "power",
    "bake",
    "breaker_grace",
    "holdout",
}
MAX_HOLDOUT_BP = 5_000  # a holdout is the smaller arm; half or more is another stage
_LATENCY_SLO = re.compile(r"^latency_p(\d{1,2}(?:\.\d+)?)$")
_YEAR = 365 * 86_400.0


def parse_plan(value: Any, metrics: tuple[MetricConfig, ...], source: str) -> RolloutPlan:
    """A plan from plain data (an API body); raises ConfigError naming every problem."""
    reader = Reader(LocatedDocument(value))
    plan = read_plan(reader, value, (), metrics)
    if reader.problems or plan is None:
        raise ConfigError(source, reader.problems)
    return plan


def read_plan(
    r: Reader, value: Any, path: KeyPath, metrics: tuple[MetricConfig, ...]
) -> RolloutPlan | None:
    section = r.mapping(value, path, _KEYS)
    if section is None:
        return None
    known = {*BUILT_IN_METRIC_NAMES, *(m.name for m in metrics)}

    def duration(key: str, default: float, high: float = _YEAR) -> float | None:
        return r.duration(section.get(key, default), (*path, key), high=high)

    min_duration = duration("min_duration", 3600.0)
    stages = _stages(
        r, section.get("stages", list(DEFAULT_STAGES)), (*path, "stages"), min_duration or 0.0
    )
    max_hold = duration("max_hold", 86_400.0)
    tick = duration("tick", 10.0, high=3600.0)
    bake = duration("bake", 86_400.0)
    grace = duration("breaker_grace", 30.0)
    alpha = _fraction(r, section.get("alpha", 0.05), (*path, "alpha"), high=0.5)
    power = _fraction(r, section.get("power", 0.8), (*path, "power"), high=0.999)
    primary = _primary(r, section.get("primary"), (*path, "primary"), known)
    guardrails = _guardrails(r, section.get("guardrails"), (*path, "guardrails"), known)
    slo = _slo(r, section.get("slo"), (*path, "slo"))
    holdout = _holdout(
        r,
        section.get("holdout", primary is not None),
        path,
        stages or (),
        declared="holdout" in section,
    )
    if alpha is not None and power is not None and power <= alpha:
        r.problem((*path, "power"), f"must be above alpha ({alpha:g}), got {power:g}")
        return None
    if (
        stages is None
        or min_duration is None
        or max_hold is None
        or tick is None
        or bake is None
        or grace is None
        or alpha is None
        or power is None
        or primary is False
        or guardrails is None
        or slo is None
        or holdout is False
    ):
        return None
    return RolloutPlan(
        stages=stages,
        max_hold=max_hold,
        tick=tick,
        primary=primary if isinstance(primary, PrimaryConfig) else None,
        guardrails=guardrails,
        slo=slo,
        alpha=alpha,
        power=power,
        bake=bake,
        breaker_grace=grace,
        holdout=holdout if isinstance(holdout, HoldoutConfig) else None,
    )


def _stages(
    r: Reader, value: Any, path: KeyPath, min_duration: float
) -> tuple[StageConfig, ...] | None:
    if not isinstance(value, list) or not value:
        r.problem(path, "expected a list of percentages such as [5, 25, 50, 75, 100]")
        return None
    out: list[StageConfig] = []
    for index, item in enumerate(value):
        item_path = (*path, index)
        approval, duration = False, min_duration
        load_test = None
        if isinstance(item, dict):
            body = r.mapping(
                item, item_path, {"percentage", "approval", "min_duration", "load_test"}
            )
            if body is None:
                return None
            if "percentage" not in body:
                r.problem((*item_path, "percentage"), "required: the stage's percentage")
                return None
            percentage = r.percentage(body["percentage"], (*item_path, "percentage"))
            approval_value = r.boolean(body.get("approval", False), (*item_path, "approval"))
            duration_value = r.duration(
                body.get("min_duration", min_duration), (*item_path, "min_duration"), high=_YEAR
            )
            if approval_value is None or duration_value is None:
                return None
            approval, duration = approval_value, duration_value
            if body.get("load_test") is not None:
                load_test = _load_test(r, body["load_test"], (*item_path, "load_test"))
                if load_test is None:
                    return None
        else:
            percentage = r.percentage(item, item_path)
        if percentage is None:
            return None
        if percentage == 0:
            r.problem(item_path, "a stage above 0% (0% is where a rollback goes)")
            return None
        if out and percentage <= out[-1].percentage_bp:
            r.problem(item_path, "stages must rise: each above the one before")
            return None
        out.append(StageConfig(percentage, approval, duration, load_test))
    if out[-1].percentage_bp != 10_000:
        r.problem(path, "the last stage must be 100 (a rollout ends with all traffic on ML)")
        return None
    return tuple(out)


def _holdout(
    r: Reader,
    value: Any,
    plan_path: KeyPath,
    stages: tuple[StageConfig, ...],
    *,
    declared: bool,
) -> HoldoutConfig | bool | None:
    """`holdout: {percentage: 5}` (true: the default 5%) or false. None: no holdout; False:
    invalid (reported). Without a key, plans with a primary metric hold out the default, and
    a problem with it is the stages', named as the default."""
    path = (*plan_path, "holdout")
    if value is False:
        return None
    if value is True:
        percentage: int | None = DEFAULT_HOLDOUT.percentage_bp
    else:
        section = r.mapping(value, path, {"percentage"})
        if section is None:
            return False
        if "percentage" not in section:
            r.problem((*path, "percentage"), "required: the control share kept, such as 5")
            return False
        percentage = r.percentage(section["percentage"], (*path, "percentage"))
    if percentage is None:
        return False
    if not 0 < percentage < MAX_HOLDOUT_BP:
        r.problem(
            (*path, "percentage"),
            f"above 0 and below {MAX_HOLDOUT_BP / 100:g} (the control share kept at the last "
            f"stage), got {percentage / 100:g}",
        )
        return False
    if len(stages) > 1 and 10_000 - percentage <= stages[-2].percentage_bp:
        left = f"leaves the treatment at {(10_000 - percentage) / 100:g}%, not above the stage"
        before = f"before ({stages[-2].percentage_bp / 100:g}%)"
        if not declared:
            r.problem(
                (*plan_path, "stages"),
                f"the default holdout ({percentage / 100:g}% kept on control at the last stage, "
                f"with a primary metric) {left} {before}: lower that stage, or set "
                "`holdout: false` or a smaller `holdout: {percentage: N}`",
            )
        else:
            r.problem((*path, "percentage"), f"the holdout {left} {before}")
        return False
    return HoldoutConfig(percentage)


def _load_test(r: Reader, value: Any, path: KeyPath) -> LoadTestConfig | None:
    section = r.mapping(value, path, {"requests_per_second", "duration", "p95_max"})
    if section is None:
        return None
    rate = section.get("requests_per_second", 100)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 100_000:
        r.problem((*path, "requests_per_second"), f"between 0 and 100000, got {rate!r}")
        return None
    duration = r.duration(section.get("duration", "60s"), (*path, "duration"), high=3600.0)
    p95 = r.duration(section.get("p95_max", "100ms"), (*path, "p95_max"), high=60.0)
    if duration is None or p95 is None:
        return None
    return LoadTestConfig(float(rate), duration, p95)


def _fraction(r: Reader, value: Any, path: KeyPath, *, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        r.problem(path, f"expected a number, got {value!r}")
        return None
    if not 0 < value <= high:
        r.problem(path, f"must be above 0 and at most {high:g}, got {value:g}")
        return None
    return float(value)


def _amount(r: Reader, value: Any, path: KeyPath) -> Amount | None:
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
    r.problem(path, f"expected a positive number or a percentage such as '10%', got {value!r}")
    return None


def _primary(r: Reader, value: Any, path: KeyPath, known: set[str]) -> PrimaryConfig | bool | None:
    """None: no primary metric; False: invalid (reported)."""
    if value is None:
        return None
    section = r.mapping(
        value, path, {"metric", "minimum_detectable_effect", "allow_unmeasured", "margin"}
    )
    if section is None:
        return False
    metric = section.get("metric")
    if metric not in known:
        r.problem((*path, "metric"), f"not a metric of this experiment: {metric!r}")
        return False
    if "minimum_detectable_effect" not in section:
        r.problem((*path, "minimum_detectable_effect"), "required: the smallest effect to detect")
        return False
    effect = _amount(r, section["minimum_detectable_effect"], (*path, "minimum_detectable_effect"))
    unmeasured = r.boolean(section.get("allow_unmeasured", False), (*path, "allow_unmeasured"))
    margin = None
    if "margin" in section:
        margin = _amount(r, section["margin"], (*path, "margin"))
        if margin is None:
            return False
    if effect is None or unmeasured is None:
        return False
    return PrimaryConfig(str(metric), effect, unmeasured, margin)


def _guardrails(
    r: Reader, value: Any, path: KeyPath, known: set[str]
) -> tuple[GuardrailConfig, ...] | None:
    if value is None:
        return DEFAULT_GUARDRAILS
    if not isinstance(value, list):
        r.problem(path, "expected a list of {metric, margin}")
        return None
    out: list[GuardrailConfig] = []
    for index, item in enumerate(value):
        item_path = (*path, index)
        section = r.mapping(item, item_path, {"metric", "margin"})
        if section is None:
            return None
        metric = section.get("metric")
        if metric not in known:
            r.problem((*item_path, "metric"), f"not a metric of this experiment: {metric!r}")
            return None
        if any(g.metric == metric for g in out):
            r.problem((*item_path, "metric"), f"{metric!r} is already a guardrail")
            return None
        margin = _amount(r, section.get("margin"), (*item_path, "margin"))
        if margin is None:
            return None
        out.append(GuardrailConfig(str(metric), margin))
    return tuple(out)


def _slo(r: Reader, value: Any, path: KeyPath) -> SloConfig | None:
    if value is None:
        return SloConfig()
    if not isinstance(value, dict):
        r.problem(path, "expected a mapping such as {latency_p95: 100ms, error_rate: 1%}")
        return None
    quantile = limit = error_rate = None
    for key, item in value.items():
        item_path = (*path, key)
        match = _LATENCY_SLO.match(str(key))
        if match:
            q = float(match.group(1)) / 100
            seconds = r.duration(item, item_path, high=3600.0)
            if seconds is None or not 0 < q < 1:
                return None
            if quantile is not None:
                r.problem(item_path, "one latency SLO only")
                return None
            quantile, limit = q, seconds
        elif key == "error_rate":
            amount = _amount(r, item, item_path)
            if amount is None:
                return None
            rate = amount.value
            if not 0 < rate < 1:
                r.problem(item_path, f"a rate between 0 and 100%, got {item!r}")
                return None
            error_rate = rate
        else:
            r.problem(
                item_path, "unknown key (expected latency_pNN such as latency_p95, or error_rate)"
            )
            return None
    return SloConfig(quantile, limit, error_rate)
