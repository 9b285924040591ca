"""One rollout stage with a fixed population of users (issue 26, item 8), by simulation
through the pure gate function (control/rollout/gates.py::decide).

The same users keep coming back: each user has their own conversion and error propensity
(so their requests are alike) and their own activity. The stage's size in samples grows with
the requests per user (the design effect), so an ETA in requests recedes; in users it
settles, and the gate says when the users needed exceed what the stage reaches by its max
hold. Run `python -m benchmarks.stage_sim users`; tests/test_stage_sim.py runs it small."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from benchmarks.common import verdict, write_section
from benchmarks.gate_sim import POWER_SCENARIOS, caught_by_planned_n
from benchmarks.rollout_sim import PLAN, Arm, _add, _independent, experiment
from config.model import ExperimentConfig
from control.rollout.gates import Decision, StageInputs, decide
from control.stats import tuning
from control.stats.clusters import ClusteredSums
from state.measurements import CLUSTERS, Sums

ALPHA_PER_STAGE = 0.05 / 4  # the plan's alpha over its compared stages
MAX_TICKS = 1500  # of a stage in `stage_lengths`: 3M requests at 2,000 a tick
FIXED_PLAN: dict[str, object] = {
    "stages": [5, 25, 50, 100],
    "min_duration": "1h",
    "max_hold": "48h",
    "tick": "10m",
    "bake": "10s",
    "primary": {"metric": "converted", "minimum_detectable_effect": 0.02},
    "guardrails": [{"metric": "error", "margin": 0.01}],
}


@dataclass
class ArmSums:
    """Per-cluster sums of one arm's metrics (the proxy's clusters: user id mod CLUSTERS)."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> (3, CLUSTERS)

    def add(self, metric: str, clusters: np.ndarray, values: np.ndarray) -> None:
        table = self.sums.setdefault(metric, np.zeros((3, CLUSTERS)))
        table[0] += np.bincount(clusters, minlength=CLUSTERS)
        table[1] += np.bincount(clusters, weights=values, minlength=CLUSTERS)
        table[2] += np.bincount(clusters, weights=values * values, minlength=CLUSTERS)

    def clustered(self) -> dict[str, ClusteredSums]:
        return {
            metric: ClusteredSums.of(
                (True, int(n), float(s), float(s2)) for n, s, s2 in table.T if n > 0
            )
            for metric, table in self.sums.items()
        }


@dataclass(frozen=True)
class Look:
    hours: float
    decision: Decision
    samples_needed: int  # the binding metric's treatment samples
    samples_eta: float | None  # seconds, at the samples' rate (the ETA before item 8)
    users: dict[str, object] | None  # the samples gate's "users" numbers


def fixed_population(
    *,
    users: int,
    per_tick: int,
    hours: float,
    seed: int,
    split_bp: int = 500,
    plan: dict[str, object] | None = None,
    stop_early: bool = True,
) -> list[Look]:
    """One stage at `split_bp` with `users` users (fixed), `per_tick` requests a tick: each
    request's user drawn by activity (Gamma(0.5), heavy and light users), each user with a
    conversion propensity Beta(1, 4) (mean 20%) and an error propensity Beta(0.2, 19.8)
    (mean 1%). Looks at every tick until `hours`, or until the first decision other than an
    insufficient-samples hold with `stop_early`."""
    exp: ExperimentConfig = experiment(plan or FIXED_PLAN)
    rollout = exp.rollout
    assert rollout is not None
    rng = np.random.default_rng(seed)
    activity = rng.gamma(0.5, 1.0, users)
    activity /= activity.sum()
    converts = rng.beta(1.0, 4.0, users)
    errs = rng.beta(0.2, 19.8, users)
    treated = rng.random(users) < split_bp / 10_000
    cluster = np.arange(users) % CLUSTERS
    arms = (ArmSums(), ArmSums())
    seen = np.zeros(users, dtype=bool)
    readings: list[tuple[float, tuple[float, float]]] = []
    looks: list[Look] = []
    for tick in range(1, int(hours * 3600 / rollout.tick) + 1):
        who = rng.choice(users, size=per_tick, p=activity)
        seen[who] = True
        error = (rng.random(per_tick) < errs[who]).astype(np.float64)
        converted = (rng.random(per_tick) < converts[who]).astype(np.float64)
        for index, arm in enumerate(arms):
            mask = treated[who] == bool(index)
            arm.add("error", cluster[who[mask]], error[mask])
            answered = mask & (error == 0)
            arm.add("converted", cluster[who[answered]], converted[answered])
        now = tick * rollout.tick
        units = (float((seen & ~treated).sum()), float((seen & treated).sum()))
        earlier = next(((t, u) for t, u in readings if t >= now / 2), None)
        readings.append((now, units))
        inputs = StageInputs(
            now,
            0,
            0.0,
            split_bp,
            arms[0].clustered(),
            arms[1].clustered(),
            units=((units[0], 0.0), (units[1], 0.0)),
            earlier_units=earlier,
        )
        decision = decide(rollout, exp, inputs)
        gate = next((g for g in decision.gates if g.name == "samples"), None)
        numbers = gate.numbers if gate is not None else {}
        needed = int(numbers.get("needed", {}).get("treatment", 0))
        have = int(numbers.get("have", {}).get("treatment", 0))
        eta = (needed - have) / (have / now) if have and needed > have else None
        looks.append(Look(now / 3600, decision, needed, eta, numbers.get("users")))
        if stop_early and decision.kind != "insufficient":
            break
    return looks


def users_section() -> str:
    started = time.perf_counter()
    rows = []
    cases = [(20_000, 6_000, 11), (200_000, 6_000, 12), (2_000_000, 6_000, 13)]
    for users, per_tick, seed in cases:
        looks = fixed_population(
            users=users, per_tick=per_tick, hours=48, seed=seed, stop_early=False
        )
        ended = next((look for look in looks if look.decision.kind != "insufficient"), None)
        for hours in (1, 6, 24, 48):
            look = looks[min(len(looks), round(hours * 6)) - 1]
            numbers = look.users or {}
            needed = numbers.get("needed", {})
            assert isinstance(needed, dict)
            rows.append(
                f"| {users:,} | {hours} h | {look.samples_needed:,} | "
                f"{_hours(look.samples_eta)} | {needed.get('treatment', 0):,} | "
                f"{_hours(look.decision.eta_seconds)} | {look.decision.kind} |"
            )
        first = "never" if ended is None else f"{ended.hours:g} h ({ended.decision.kind})"
        rows.append(f"| {users:,} | first other than insufficient | | | | | {first} |")
        if ended is not None and ended.decision.kind == "cannot_finish":
            rows.append(f"| | reason | {ended.decision.reason[:220]}… | | | | |")
        print("\n".join(rows[-6:]), flush=True)
    table = "\n".join(rows)
    return f"""## Issue 26 item 8: sizing in users

`python -m benchmarks.stage_sim users` on {time.strftime("%Y-%m-%d")}, seeds 11, 12, 13
({time.perf_counter() - started:.0f} s in all). One stage at 5% of the plan
`benchmarks/stage_sim.py::FIXED_PLAN` (primary converted, MDE 2 points; guardrail error,
margin 1 point; stages 5, 25, 50, 100 so alpha 0.05 / 3; min_duration 1 h, max_hold 48 h,
a look every 10 minutes), 6,000 requests a tick (36,000 an hour) from a fixed population of users:
each request's user drawn by activity (Gamma(0.5)), each user with a conversion propensity
Beta(1, 4) and an error propensity Beta(0.2, 19.8); sums per cluster of users (128) as the
proxy keeps them, distinct users per arm for the units. "Samples needed" is the binding
metric's treatment samples and their ETA at the samples' rate (the ETA before: it recedes
as the design effect grows); "users needed" the same size in users and the ETA the gate now
gives (new users at their rate since half the stage's age); "verdict" the gate's kind.

| users | at | samples needed (treatment) | ETA in samples | users needed (treatment) \
| ETA in users | verdict |
|---|---|---:|---:|---:|---:|---|
{table}

The size in samples grows with the requests per user (the receding ETA); the size in users
settles, and once the users needed exceed what the recent rate of new users reaches by the
max hold the gate holds with kind `cannot_finish` (the controller escalates at once, with
these numbers, instead of after max_hold).
"""


@contextlib.contextmanager
def tuned(on: bool) -> Iterator[None]:
    """The gates with N* tuned to each stage's planned n (on), or gbstats' default 5,000."""
    before = tuning.TUNED
    tuning.TUNED = on
    try:
        yield
    finally:
        tuning.TUNED = before


def stage_lengths(
    treatment: Arm, *, runs: int, seed: int, split_bp: int = 500, per_tick: int = 2000
) -> tuple[list[int], float, float]:
    """(requests in the stage when it continued, one per run that did; share rolled back;
    share neither by `MAX_TICKS`): the first stage of benchmarks/rollout_sim.py's plan at
    `split_bp` (5 stages: alpha 0.05 / 4 per stage), every metric simulated, a look a tick."""
    later = [p for p in (25, 50, 75, 90) if p > split_bp / 100][:3]
    exp = experiment({**PLAN, "stages": [split_bp / 100, *later, 100], "min_duration": "1s"})
    plan = exp.rollout
    assert plan is not None
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    rolled = undecided = 0
    for _ in range(runs):
        sums_c: dict[str, Sums] = {}
        sums_t: dict[str, Sums] = {}
        for tick in range(1, MAX_TICKS + 1):
            treated = int(rng.binomial(per_tick, split_bp / 10_000))
            _add(sums_c, rng, Arm(), per_tick - treated)
            _add(sums_t, rng, treatment, treated)
            inputs = StageInputs(
                float(tick), 0, 0.0, split_bp, _independent(sums_c), _independent(sums_t)
            )
            decision = decide(plan, exp, inputs)
            if decision.verdict == "continue":
                lengths.append(tick * per_tick)
                break
            if decision.verdict == "rollback":
                rolled += 1
                break
        else:
            undecided += 1
    return lengths, rolled / runs, undecided / runs


def faster_section(runs: int) -> str:
    started = time.perf_counter()
    rows, power_rows = [], []
    medians: dict[tuple[int, bool], float] = {}
    worst_aa = 0.0
    for split_bp in (500, 2500):
        for on in (False, True):
            with tuned(on):
                lengths, rolled, undecided = stage_lengths(
                    Arm(), runs=runs, seed=2606, split_bp=split_bp
                )
            medians[(split_bp, on)] = float(np.median(lengths)) if lengths else float("nan")
            worst_aa = max(worst_aa, rolled)
            rows.append(
                f"| {split_bp / 100:g}% | {'planned n' if on else '5,000 (gbstats default)'} "
                f"| {medians[(split_bp, on)]:,.0f} | {np.percentile(lengths, 90):,.0f} "
                f"| {rolled:.3f} | {undecided:.3f} |"
            )
            print(rows[-1], flush=True)
    lowest, highest = 1.0, 0.0
    for name, (arm, metric) in POWER_SCENARIOS.items():
        for on in (False, True):
            with tuned(on):
                caught, planned = caught_by_planned_n(arm, metric, runs=runs, seed=2607)
            if on:
                lowest, highest = min(lowest, caught), max(highest, caught)
            power_rows.append(
                f"| {name} | {'planned n' if on else '5,000'} | {planned:,.0f} | {caught:.3f} |"
            )
            print(power_rows[-1], flush=True)
    saving = [1 - medians[(bp, True)] / medians[(bp, False)] for bp in (500, 2500)]
    limit = ALPHA_PER_STAGE + 2 * (ALPHA_PER_STAGE * (1 - ALPHA_PER_STAGE) / runs) ** 0.5
    return f"""## Issue 26 item 6: faster stages

`python -m benchmarks.stage_sim faster {runs}` on {time.strftime("%Y-%m-%d")}, seeds 2606
(stage lengths) and 2607 (power) ({time.perf_counter() - started:.0f} s in all). The first
stage of benchmarks/rollout_sim.py's plan (5 stages, so alpha 0.05 / 4 per stage; a Holm
family of 4 harm tests; power 0.8; min_duration 1 s) at 2,000 requests a tick, A/A, {runs}
stages a row, looked at every tick until the gate continues or rolls back (at most
{MAX_TICKS:,} ticks). The confidence sequences' N* (the n they are tightest at) is gbstats'
default 5,000 (before) or each metric's planned n (`control/stats/tuning.py`: the fixed
point N* = size(N*), on a grid of a quarter doubling), for the sizes and for the gates'
tests alike.

| treatment share | N* | median requests when the stage continued | 90th percentile \
| A/A rolled back | undecided |
|---|---|---:|---:|---:|---:|
{chr(10).join(rows)}

Saving in the median stage: {saving[0]:.1%} at 5%, {saving[1]:.1%} at 25%. A/A rolled back
at most {worst_aa:.3f} per stage (target at most the stage's alpha {ALPHA_PER_STAGE}, up to
{limit:.3f} with the noise of {runs} runs: {verdict(worst_aa <= limit)}).

Power at the planned n (as "Stages sized for the test actually run": the share of 5%
stages rolled back for harm on the metric by the time both arms have the planned samples):

| harm | N* | planned treatment samples | caught by then |
|---|---|---:|---:|
{chr(10).join(power_rows)}

With N* tuned: lowest {lowest:.3f}, highest {highest:.3f} (target at least the planned 0.80:
{verdict(lowest >= 0.75)}). The saving is what tuning N* can give: at n = N* the
sequence's width is still about 1.3 times the fixed-horizon z at these alphas, so a stage
stays well above the fixed-horizon n; the issue's other option, group-sequential alpha
spending (O'Brien-Fleming, 0.79 times the fixed n on average in the study), is not done
(it needs a stage's maximum n fixed in advance, which the gates' max_hold does not give).
"""


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:,.1f} h"


def main() -> None:
    if sys.argv[1:2] == ["faster"]:
        text = faster_section(int(sys.argv[2]) if len(sys.argv) > 2 else 200)
        write_section("stage-sim-faster", text)
        print(text)
    if sys.argv[1:2] == ["users"]:
        text = users_section()
        write_section("stage-sim-users", text)
        print(text)


if __name__ == "__main__":
    main()
