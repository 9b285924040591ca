"""The rollout's gates: a pure function from a stage's sufficient statistics to a decision.

No I/O and no clock of its own (the caller passes `now`), so every rule can be checked by
simulation (benchmarks/rollout_sim.py, tests/test_rollout_gates.py). First match wins:

1. rollback: the treatment breaker open past its grace; an open incident; harm shown by a
   sequential test (valid at every look) on a guardrail beyond its margin, on the primary
   metric, or on an absolute SLO. All harm tests of a stage are one Holm family, and the
   plan's alpha is split evenly over the stages that test (those with a control arm, the
   holdout included, and a 100% stage that tests SLOs; Bonferroni across the whole ramp,
   sizing.stage_alpha), so an A/A rollout is rolled back at most alpha of the time over
   all its looks.
2. hold (integrity): sample-ratio mismatch (an always-valid test), sidecars not on the
   flag version, stale data.
3. hold (insufficient): fewer samples per arm, each target metric counted in its own
   samples (the primary's outcomes received, not requests), than the sequential design of
   the tests that run needs (the reason gives the numbers and an ETA, in users where the
   units are users: control/rollout/reach.py), or min_duration not reached; "cannot_finish"
   when the users needed exceed what the recent rate of new users reaches by max_hold.
4. continue: every guardrail shown non-inferior (its sequence wholly below the margin) and
   the primary too, within its margin (unless the plan declares it allow_unmeasured).
5. otherwise: hold (undecided), escalated to a person after max_hold.
The last stage with a holdout (the plan's default when it has a primary metric) keeps a
small control share: it runs rules 1-5 like any stage, with the bake as its minimum
duration, and its "continue" is "complete" (the controller then releases the holdout to
100%). Without a holdout there is no control arm at 100%: only the breaker, incidents and
the SLOs, then completed after the bake.

The tests behind rules 1 and 4 (always-valid p-values of harm, of an SLO breached, of
non-inferiority) are in control/rollout/harm_tests.py; here, what they mean for the stage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from abgate.config.metrics_catalogue import ERROR_METRIC
from abgate.config.model import ExperimentConfig, RolloutPlan
from abgate.control.measured import EMPTY, SampleRatio
from abgate.control.metric_units import margin_text
from abgate.control.report_summary import duration
from abgate.control.rollout import sizing
from abgate.control.rollout.gate_numbers import (
    GateNumbers,
    Harm,
    OverLimit,
    RatioChecked,
    Samples,
    Tested,
)
from abgate.control.rollout.harm_tests import harm_tests, non_inferiority_p, slo_tests
from abgate.control.rollout.reach import ARMS, MIN_SPAN, stage_reach
from abgate.control.rollout.sizing import Sizing, TooFewToSize, stage_alpha
from abgate.control.stats import holm
from abgate.control.stats.clusters import ClusteredSums
from abgate.control.stats.sequential import TUNING

Verdict = Literal["rollback", "hold", "continue", "complete"]


@dataclass(frozen=True, slots=True)
class Gate:
    name: str
    status: Literal["pass", "fail", "hold", "n/a"]
    detail: str
    numbers: GateNumbers | None = None  # what it measured (control/rollout/gate_numbers.py)

    def as_json(self) -> dict[str, Any]:
        numbers = self.numbers.as_json() if self.numbers is not None else {}
        # The gate's words win over its observation's: they say what was judged of it.
        return {**numbers, "name": self.name, "status": self.status, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class StageInputs:
    """What the controller observed for the current stage (one phase)."""

    now: float
    stage_index: int
    stage_started_at: float
    percentage_bp: int  # live treatment share
    control: Mapping[str, ClusteredSums]  # metric -> sums of the current phase
    treatment: Mapping[str, ClusteredSums]
    breaker_open_for: float = 0.0  # seconds the treatment breaker has been open, 0 if not
    incident: str | None = None
    unconverged: tuple[str, ...] = ()  # instances not yet on the flag version
    stats_age: float = 0.0  # seconds since the measurements were last read
    load_test: bool | None = None  # None: the stage asks for none
    # (count, variance of the count) per arm, control first: the units the SRM counts
    # (distinct users and keyless requests, control/measured.py); None: requests
    units: tuple[tuple[float, float], tuple[float, float]] | None = None
    # an earlier reading of those units (its seconds into the stage, the counts then): new
    # users are counted at the rate since then (control/rollout/reach.py)
    earlier_units: tuple[float, tuple[float, float]] | None = None
    # the SRM check of those units, as the controller's read made it (control/measured.py)
    srm: SampleRatio | None = None

    @property
    def sample_ratio(self) -> SampleRatio:
        """The SRM check of the stage: as given, else on its units, else on its requests
        (each counted exactly), by the test the statistics worker runs on each phase."""
        share = self.percentage_bp / 10_000
        if self.srm is not None:
            return self.srm
        if self.units is not None:
            return SampleRatio.check(*self.units, share)
        requests = (self.control.get(ERROR_METRIC, EMPTY), self.treatment.get(ERROR_METRIC, EMPTY))
        return SampleRatio.check(
            (float(requests[0].count), 0.0), (float(requests[1].count), 0.0), share
        )


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    kind: str  # harm, breaker, incident, integrity, insufficient, min_duration, safe, ...
    reason: str
    gates: tuple[Gate, ...]
    eta_seconds: float | None = None
    needed: dict[str, int] = field(default_factory=dict)  # arm -> samples needed

    def as_json(self) -> dict[str, Any]:
        return {
            "decision": self.verdict,
            "kind": self.kind,
            "reason": self.reason,
            "eta_seconds": self.eta_seconds,
            "needed": self.needed,
            "gates": [gate.as_json() for gate in self.gates],
        }


def decide(
    plan: RolloutPlan,
    experiment: ExperimentConfig,
    inputs: StageInputs,
    stats_tick: float | None = None,
) -> Decision:
    stage = plan.stages[inputs.stage_index]
    gates: list[Gate] = []
    elapsed = inputs.now - inputs.stage_started_at
    tick = plan.tick if stats_tick is None else stats_tick
    holdout = plan.holds_out(inputs.stage_index)
    compared = stage.percentage_bp < 10_000 or holdout

    # 1. rollback
    if inputs.breaker_open_for > plan.breaker_grace:
        reason = (
            f"treatment breaker open for {inputs.breaker_open_for:.0f}s "
            f"(grace {plan.breaker_grace:g}s)"
        )
        return Decision("rollback", "breaker", reason, (Gate("breaker", "fail", reason),))
    gates.append(
        Gate(
            "breaker",
            "pass",
            "closed"
            if not inputs.breaker_open_for
            else f"open for {inputs.breaker_open_for:.0f}s, within the grace",
        )
    )
    if inputs.incident:
        reason = f"incident open: {inputs.incident}"
        return Decision("rollback", "incident", reason, (*gates, Gate("incident", "fail", reason)))
    alpha = stage_alpha(plan)
    harm = slo_tests(plan, inputs.treatment)
    # The stage's sizes, and each metric's N* tuned to its planned n (control/stats/tuning.py)
    needs, sized = samples_needed(plan, experiment, inputs) if compared else (None, [])
    tuned = sizing.tunings(sized)
    if compared:
        harm += harm_tests(plan, experiment, inputs.control, inputs.treatment, tuned)
    adjusted = holm([test.p_value for test in harm])
    over: list[str] = []  # SLOs the treatment is observed to breach, not yet significantly
    for test, p in zip(harm, adjusted, strict=True):
        numbers = Tested(test.observed, test.p_value, p, alpha)
        if p < alpha:
            reason = f"harm on {test.name}: {test.observed.detail} (p = {p:.2g} < {alpha:.3g})"
            return Decision(
                "rollback", "harm", reason, (*gates, Gate(test.name, "fail", reason, numbers))
            )
        if isinstance(test.observed, OverLimit) and test.observed.over:
            over.append(test.name)
            detail = f"{test.observed.detail}, not yet significant (p = {p:.2g})"
            gates.append(Gate(test.name, "hold", detail, numbers))
            continue
        gates.append(Gate(test.name, "pass", _no_harm(test.observed, p), numbers))

    # 2. hold (integrity)
    if compared:
        srm = inputs.sample_ratio
        if srm.flagged:
            reason = (
                f"sample-ratio mismatch: {srm.control[0]:.0f} control, {srm.treatment[0]:.0f} "
                f"treatment{'' if inputs.units is None else ' users'} at {srm.share * 100:g}% "
                f"(p = {srm.p_value:.2g})"
            )
            return Decision("hold", "integrity", reason, (*gates, Gate("srm", "fail", reason)))
        gates.append(Gate("srm", "pass", f"p = {srm.p_value:.2g}", RatioChecked(srm.p_value)))
    if inputs.unconverged:
        reason = f"sidecars not on the flag version: {', '.join(inputs.unconverged)}"
        return Decision("hold", "integrity", reason, (*gates, Gate("convergence", "fail", reason)))
    if inputs.stats_age > 3 * tick:
        reason = f"statistics {inputs.stats_age:.0f}s old (over three ticks)"
        return Decision("hold", "integrity", reason, (*gates, Gate("freshness", "fail", reason)))
    gates.append(Gate("integrity", "pass", "converged and fresh"))

    # At 100%: bake on the absolute SLOs, then completed.
    if not compared:
        if elapsed < plan.bake:
            reason = f"baking at 100%: {_elapsed(elapsed)} of {plan.bake:g}s"
            return Decision("hold", "bake", reason, tuple(gates), plan.bake - elapsed)
        return Decision(
            "complete", "baked", f"baked {plan.bake:g}s at 100% within the SLOs", tuple(gates)
        )

    least = plan.bake if holdout else stage.min_duration  # the holdout is kept the bake
    # 3. hold (insufficient): each target metric's own samples, per arm (a posted outcome
    # is a sample of its metric; a request without one is not)
    have_of = {
        name: {
            "control": inputs.control.get(name, EMPTY).count,
            "treatment": inputs.treatment.get(name, EMPTY).count,
        }
        for name in needs or {}
    }
    lacking = [
        name
        for name, need in (needs or {}).items()
        if any(have_of[name][arm] < need[arm] for arm in need)
    ]
    binding = _binding(needs, have_of, elapsed) if needs else None
    have = have_of[binding] if binding else {"control": 0, "treatment": 0}
    needed = needs[binding] if needs and binding else {}
    if needs is None or lacking:
        if needs is None:
            short = sized[-1]
            assert isinstance(short, TooFewToSize)  # samples_needed says which, last
            reason = (
                f"insufficient samples: {_what(plan, short.metric)} has "
                f"{short.control:,} control samples, at least {short.at_least} needed "
                "to estimate its variance"
            )
            eta = None
        else:
            reason = "insufficient samples: " + "; ".join(
                f"{_what(plan, name)} "
                + ", ".join(
                    f"{arm} {have_of[name][arm]:,} of {needs[name][arm]:,}" for arm in needs[name]
                )
                for name in lacking
            )
            etas = [_eta(have_of[name], needs[name], elapsed) for name in lacking]
            eta = None if any(e is None for e in etas) else max(e for e in etas if e is not None)
        reached = None
        if needs is not None and inputs.units is not None:  # in the unit analysed: users
            reached = stage_reach(
                needs,
                have_of,
                inputs.units,
                elapsed,
                plan.max_hold,
                inputs.earlier_units,
                "users" if experiment.sticky else "requests",
            )
        samples = Samples(have, needed, binding, tuple(sized), reached)
        if reached is not None:
            eta = reached.eta
            reason += f"; in {reached.unit}: " + ", ".join(
                f"{arm} {reached.have[arm]:,.0f} of {reached.needed[arm]:,}" for arm in ARMS
            )
            if not reached.finishes and elapsed >= max(stage.min_duration, MIN_SPAN):
                reason = (
                    "cannot finish at the observed rate: "
                    f"{reached.shortfall(plan.max_hold)} ({reason})"
                )
                gates.append(Gate("samples", "fail", reason, samples))
                return Decision("hold", "cannot_finish", reason, tuple(gates), None, needed)
        if eta is not None:
            eta = max(eta, least - elapsed)
            reason += f" (about {duration(eta)} more at the observed rate)"
        gates.append(Gate("samples", "hold", reason, samples))
        return Decision("hold", "insufficient", reason, tuple(gates), eta, needed)
    gates.append(
        Gate(
            "samples",
            "pass",
            "enough samples",
            Samples(have, needed, binding, by_metric=have_of),
        )
    )
    if elapsed < least:
        if holdout:  # a bake, not a wait for a person: never escalated for its length
            kind, name = "bake", "bake"
            reason = f"baking with the holdout: {_elapsed(elapsed)} of {least:g}s"
        else:
            kind = name = "min_duration"
            reason = f"min_duration not reached: {_elapsed(elapsed)} of {least:g}s"
        gates.append(Gate(name, "hold", reason))
        return Decision("hold", kind, reason, tuple(gates), least - elapsed, needed)
    if inputs.load_test is False:
        reason = "the stage's load test has not passed yet"
        gates.append(Gate("load_test", "hold", reason))
        return Decision("hold", "load_test", reason, tuple(gates), None, needed)

    # 4. continue, when every guardrail is shown non-inferior
    # (metric, margin, how the reason names it): each guardrail, and the primary unless a
    # guardrail already holds it to a margin or the plan lets it go unmeasured.
    shown = [(g.metric, g.margin, g.metric) for g in plan.guardrails]
    primary = plan.primary
    if (
        primary is not None
        and not primary.allow_unmeasured
        and all(g.metric != primary.metric for g in plan.guardrails)
    ):
        margin = primary.non_inferiority_margin
        shown.append((primary.metric, margin, f"{primary.metric}, the primary"))
    pending = []
    within = []
    for name, margin, label in shown:
        metric = experiment.metric(name)
        assert metric is not None
        limit = margin_text(metric.name, metric.type, margin)  # latency in ms, a rate in pp
        within.append(f"{label} within {limit}")
        p = non_inferiority_p(
            metric,
            inputs.control.get(name),
            inputs.treatment.get(name),
            margin.absolute,
            tuned.get(name, TUNING),
        )
        if p >= plan.alpha:
            pending.append(f"{label} (margin {limit}, p = {p:.2g})")
    pending += [f"{name} (observed over its limit)" for name in over]
    if not pending:
        margins = "; ".join(within)
        detail = "every guardrail and the primary within its margin" + (
            f" ({margins})" if margins else ""
        )
        passed = (*gates, Gate("non_inferiority", "pass", detail))
        if holdout:
            reason = (
                f"baked {plan.bake:g}s with the holdout: guardrails and the primary "
                "non-inferior; the holdout is released to 100%"
            )
            return Decision("complete", "holdout", reason, passed, None, needed)
        return Decision(
            "continue", "safe", "guardrails and the primary non-inferior", passed, None, needed
        )
    reason = "undecided: not yet shown within the margin: " + ", ".join(pending)
    gates.append(Gate("non_inferiority", "hold", reason))
    return Decision("hold", "undecided", reason, tuple(gates), None, needed)


def _elapsed(seconds: float) -> str:
    """Rounded down: 29.96 s of a 30 s minimum is "29.9s", never "30s of 30s"."""
    return f"{math.floor(max(0.0, seconds) * 10) / 10:g}s"


def _eta(have: dict[str, int], needed: dict[str, int], elapsed: float) -> float | None:
    """Seconds until every arm has its samples, at each arm's arrival rate so far."""
    worst = 0.0
    for arm, count in have.items():
        missing = needed[arm] - count
        if missing <= 0:
            continue
        if count == 0 or elapsed <= 0:
            return None
        worst = max(worst, missing / (count / elapsed))
    return worst


def _what(plan: RolloutPlan, metric: str) -> str:
    if plan.primary is not None and plan.primary.metric == metric:
        return f"{metric} (the primary: outcomes received)"
    return metric


def _binding(
    needs: dict[str, dict[str, int]], have_of: dict[str, dict[str, int]], elapsed: float
) -> str:
    """The target metric that decides when the stage has its samples: the one furthest
    from its size (by ETA, else by the share still missing)."""

    def key(name: str) -> tuple[float, float]:
        eta = _eta(have_of[name], needs[name], elapsed)
        missing = max(
            (needs[name][arm] - have_of[name][arm]) / max(1, needs[name][arm])
            for arm in needs[name]
        )
        return (math.inf if eta is None else eta, missing)

    return max(needs, key=key)


def samples_needed(
    plan: RolloutPlan, experiment: ExperimentConfig, inputs: StageInputs
) -> tuple[dict[str, dict[str, int]] | None, list[Sizing]]:
    """The stage's sizes at its live split (control/rollout/sizing.py)."""
    return sizing.samples_needed(
        plan, experiment, inputs.control, inputs.treatment, inputs.percentage_bp / 10_000
    )


def _no_harm(observed: Harm | OverLimit, p: float) -> str:
    """A passing harm test in words: what it saw and why that is no harm (yet). A
    difference beyond the margin read alone ("worse by 0.23 ms, margin 0.08 ms") looked
    like a failure on a passing gate (trial)."""
    if isinstance(observed, Harm) and observed.harm > observed.margin:
        beyond = "beyond the margin but " if observed.margin > 0 else ""
        return f"{observed.detail}: {beyond}not significantly (p = {p:.2g})"
    return f"{observed.detail}: no harm shown (p = {p:.2g})"
