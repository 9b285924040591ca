"""`experiments.NAME.rollout`: the staged rollout plan, from its declarations in
`config.schema_rollout`, validated with the rest of the config (and, through `parse_plan`,
when a plan is given to the control API); here, the checks across its settings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from abgate.config.errors import ConfigError
from abgate.config.fields import Reader, check_duration, shown
from abgate.config.metrics_catalogue import BUILT_IN_METRIC_NAMES
from abgate.config.model import (
    DEFAULT_GUARDRAILS,
    DEFAULT_HOLDOUT,
    ERROR,
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
from abgate.config.schema_rollout import LATENCY_SLO, PLAN, PlanSection, amount
from abgate.config.settings import build, validate
from abgate.config.values import Names
from abgate.config.yaml_lines import KeyPath, LocatedDocument

# The built-in rates: abgate's own error share, where worse is higher.
BUILT_IN_RATES = {ERROR.name: ERROR.direction}
MAX_HOLDOUT_BP = 5_000  # a holdout is the smaller arm; half or more is another stage


def parse_plan(value: Any, metrics: tuple[MetricConfig, ...], source: str) -> RolloutPlan:
    """A plan from plain data (an API body); raises ConfigError naming every problem."""
    reader = Reader(LocatedDocument(value))
    rates = {m.name: m.direction for m in metrics if m.type == "binary"}
    plan = read_plan(reader, value, (), (metric.name for metric in metrics), rates)
    if reader.problems or plan is None:
        raise ConfigError(source, reader.problems)
    return plan


def read_plan(
    r: Reader,
    value: Any,
    path: KeyPath,
    metrics: Iterable[str],
    rates: Mapping[str, str | None],
) -> RolloutPlan | None:
    """The plan at `path`, its problems reported to `r`; `metrics`: the names of its
    experiment's declared metrics; `rates`: the direction of each binary one (None where
    it was refused)."""
    known = frozenset({*BUILT_IN_METRIC_NAMES, *metrics})
    # A refused value leaves its key at the default: each check across settings whose own
    # keys passed still runs, so one check-config lists every problem of the plan.
    refused: set[str] = set()
    plan = validate(r, PLAN, PlanSection, value, path, Names(metrics=known), refused=refused)
    if plan is None:
        return None
    before = len(r.problems)
    stages = _stages(r, plan, (*path, "stages")) if "stages" not in refused else None
    slo = _slo(r, plan.slo, (*path, "slo")) if "slo" not in refused else None
    guardrails = _guardrails(r, plan, (*path, "guardrails"))
    _effects_on_rates(r, plan, path, {**BUILT_IN_RATES, **rates})
    declared = isinstance(value, dict) and "holdout" in value
    holdout = None
    if refused.isdisjoint({"holdout", "primary"}):
        holdout = _holdout(r, plan, path, stages, declared=declared)
    if refused.isdisjoint({"alpha", "power"}) and plan.power <= plan.alpha:
        r.problem((*path, "power"), f"must be above alpha ({plan.alpha:g}), got {plan.power:g}")
    if refused or len(r.problems) > before or stages is None or slo is None:
        return None
    primary = plan.primary
    return build(
        RolloutPlan,
        plan,
        stages=stages,
        primary=build(PrimaryConfig, primary) if primary is not None else None,
        guardrails=guardrails,
        slo=slo,
        holdout=holdout,
    )


def _stages(r: Reader, plan: PlanSection, path: KeyPath) -> tuple[StageConfig, ...] | None:
    out: list[StageConfig] = []
    for index, stage in enumerate(plan.stages):
        if stage.percentage == 0:
            r.problem((*path, index), "a stage above 0% (0% is where a rollback goes)")
            return None
        if out and stage.percentage <= out[-1].percentage_bp:
            r.problem((*path, index), "stages must rise: each above the one before")
            return None
        load_test = stage.load_test
        out.append(
            StageConfig(
                stage.percentage,
                stage.approval,
                stage.min_duration if stage.min_duration is not None else plan.min_duration,
                build(LoadTestConfig, load_test) if load_test is not None else None,
            )
        )
    if out[-1].percentage_bp != 10_000:
        r.problem(path, "the last stage must be 100 (a rollout ends with all traffic on ML)")
        return None
    return tuple(out)


def _effects_on_rates(
    r: Reader, plan: PlanSection, path: KeyPath, rates: Mapping[str, str | None]
) -> None:
    """An effect or a margin on a rate (a binary metric) that no rate can move by: an
    absolute one of 1 or more, or a relative one of 100% or more where worse is lower (a
    loss of the whole rate). Where worse is higher, a relative one is a multiple of the rate
    (an error rate of 1% tripled is 3%): possible for a rate low enough."""
    amounts: list[tuple[KeyPath, str, Amount]] = []
    if plan.primary is not None:
        where = (*path, "primary")
        metric = plan.primary.metric
        amounts.append(
            ((*where, "minimum_detectable_effect"), metric, plan.primary.minimum_detectable_effect)
        )
        if plan.primary.margin is not None:
            amounts.append(((*where, "margin"), metric, plan.primary.margin))
    for index, guardrail in enumerate(plan.guardrails or ()):
        amounts.append(((*path, "guardrails", index, "margin"), guardrail.metric, guardrail.margin))
    for where, metric, effect in amounts:
        if metric not in rates:
            continue
        if not effect.relative and effect.value >= 1:
            r.problem(
                where,
                f"{metric} is a rate: baseline + effect must stay in (0, 1), so an absolute "
                f"effect must be below 1, got {effect}",
            )
        elif effect.relative and effect.value >= 1 and rates[metric] == "higher":
            r.problem(
                where,
                f"{metric} is a rate where higher is better: a loss of {effect} of it would "
                "take it to 0 or below (baseline - effect must stay in (0, 1)), so a "
                f"relative effect must be below 100%, got {effect}",
            )


def _guardrails(r: Reader, plan: PlanSection, path: KeyPath) -> tuple[GuardrailConfig, ...]:
    if plan.guardrails is None:
        return DEFAULT_GUARDRAILS
    out: list[GuardrailConfig] = []
    for index, guardrail in enumerate(plan.guardrails):
        if any(g.metric == guardrail.metric for g in out):
            r.problem((*path, index, "metric"), f"{shown(guardrail.metric)} is already a guardrail")
        out.append(GuardrailConfig(guardrail.metric, guardrail.margin))
    return tuple(out)


def _holdout(
    r: Reader,
    plan: PlanSection,
    plan_path: KeyPath,
    stages: tuple[StageConfig, ...] | None,
    *,
    declared: bool,
) -> HoldoutConfig | None:
    """Without the key, plans with a primary metric hold out the default share, and a
    problem with it is the stages', named as the default."""
    if plan.holdout is not None:
        percentage = plan.holdout.percentage
    elif not declared and plan.primary is not None:
        percentage = DEFAULT_HOLDOUT.percentage_bp
    else:
        return None
    path = (*plan_path, "holdout")
    if not 0 < percentage < MAX_HOLDOUT_BP:
        r.problem(
            (*path, "percentage"),
            f"above 0 and below {MAX_HOLDOUT_BP / 100:g} (the control share kept at the last "
            f"stage), got {percentage / 100:g}",
        )
        return None
    if stages and len(stages) > 1 and 10_000 - percentage <= stages[-2].percentage_bp:
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
        return None
    return HoldoutConfig(percentage)


def _slo(r: Reader, limits: dict[str, Any], path: KeyPath) -> SloConfig | None:
    """Each limit read with its key: a duration for latency_pNN, a share for error_rate."""
    quantile = limit = error_rate = None
    for key, item in limits.items():
        item_path = (*path, key)
        match = LATENCY_SLO.match(key)
        if match:
            q = float(match.group(1)) / 100
            seconds = r.checked(item_path, check_duration, item, high=3600.0)
            if seconds is None or not 0 < q < 1:
                return None
            if quantile is not None:
                r.problem(item_path, "one latency SLO only")
                return None
            quantile, limit = q, seconds
        else:  # error_rate
            share = r.checked(item_path, amount, item)
            if share is None:
                return None
            if not 0 < share.value < 1:
                r.problem(item_path, f"a rate between 0 and 100%, got {shown(item)}")
                return None
            error_rate = share.value
    return SloConfig(quantile, limit, error_rate)
