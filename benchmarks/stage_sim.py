"""One rollout stage with a fixed population of users (issue 26, item 8), by simulation
through the pure gate function (control/rollout/gates.py::decide).

The same users keep coming back: each user has their own conversion and error propensity
(so their requests are alike) and their own activity. The stage's size in samples grows with
the requests per user (the design effect), so an ETA in requests recedes; in users it
settles, and the gate says when the users needed exceed what the stage reaches by its max
hold. Run `python -m benchmarks.stage_sim users`; tests/test_stage_sim.py runs it small."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import special

from abgate.config.model import ExperimentConfig
from abgate.control.rollout.gate_numbers import Samples
from abgate.control.rollout.gates import Decision, StageInputs, decide
from abgate.control.rollout.sizing import Sized, samples_needed
from abgate.control.stats import tuning
from abgate.control.stats.clusters import ClusteredSums
from abgate.state.measurements import CLUSTERS
from benchmarks.common import verdict, write_section
from benchmarks.gate_sim import (
    ONE_STAGE,
    first_stage_looks,
    first_stage_plan,
)
from benchmarks.rollout_sim import Arm, experiment

ALPHA_PER_STAGE = 0.05 / 5  # the plan's alpha over its stages that test (holdout included)
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
    exp: ExperimentConfig = experiment(plan or FIXED_PLAN, sticky=[{"header": "X-User-Id"}])
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
        numbers = gate.numbers if gate is not None else None
        samples = numbers if isinstance(numbers, Samples) else Samples({}, {}, None)
        needed = samples.needed.get("treatment", 0)
        have = samples.have.get("treatment", 0)
        eta = (needed - have) / (have / now) if have and needed > have else None
        reached = samples.users.as_json() if samples.users is not None else None
        looks.append(Look(now / 3600, decision, needed, eta, reached))
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
            needed = (look.users or {}).get("needed")
            in_users = "-" if not isinstance(needed, dict) else f"{needed['treatment']:,}"
            rows.append(
                f"| {users:,} | {hours} h | {look.samples_needed:,} | "
                f"{_hours(look.samples_eta)} | {in_users} | "
                f"{_hours(look.decision.eta_seconds)} | {look.decision.kind} |"
            )
        first = "never" if ended is None else f"{ended.hours:.1f} h ({ended.decision.kind})"
        rows.append(f"| {users:,} | first other than insufficient | | | | | {first} |")
        if ended is not None and ended.decision.kind == "cannot_finish":
            rows.append(f"| | reason | {ended.decision.reason[:220]}… | | | | |")
        print("\n".join(rows[-7:]), flush=True)
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
    exp = first_stage_plan(split_bp, min_duration="1s")
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    rolled = undecided = 0
    for _ in range(runs):
        for tick, _inputs, decision in first_stage_looks(
            exp, rng, treatment, split_bp, per_tick, MAX_TICKS
        ):
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
    rows = []
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
    size_rows = []
    primary: dict[bool, float] = {}
    for on in (False, True):
        with tuned(on):
            for entry in planned_sizes(500):
                if entry.metric == "converted":
                    primary[on] = entry.treatment
                size_rows.append(
                    f"| {entry.metric} | {'planned n' if on else '5,000'} "
                    f"| {entry.binding.replace('_', '-')} | {entry.treatment:,} |"
                )
    saving = [1 - medians[(bp, True)] / medians[(bp, False)] for bp in (500, 2500)]
    fixed = _fixed_horizon_treatment(0.20, 0.185, 0.05, alpha=0.05, power=0.8, equal=True)
    limit = ALPHA_PER_STAGE + 2 * (ALPHA_PER_STAGE * (1 - ALPHA_PER_STAGE) / runs) ** 0.5
    return f"""## Issue 26 item 6: faster stages

`python -m benchmarks.stage_sim faster {runs}` on {time.strftime("%Y-%m-%d")}, seed 2606
({time.perf_counter() - started:.0f} s in all). The first
stage of benchmarks/rollout_sim.py's plan (4 compared stages and the holdout, so alpha
0.05 / 5 per stage; a Holm family of 4 harm tests; power 0.8; min_duration 1 s) at
2,000 requests a tick, A/A, {runs} stages a row, looked at every tick until the gate
continues or rolls back (at most
{MAX_TICKS:,} ticks). The confidence sequences' N* (the n they are tightest at) is gbstats'
default 5,000 (before) or each metric's planned n (`control/stats/tuning.py`: the fixed
point N* = size(N*), on a grid of a quarter doubling), for the sizes and for the gates'
tests alike.

| treatment share | N* | median requests when the stage continued | 90th percentile \
| A/A rolled back | undecided |
|---|---|---:|---:|---:|---:|
{chr(10).join(rows)}

Saving in the median stage: {saving[0]:.1%} at 5%, {saving[1]:.1%} at 25%. A/A rolled back
at most {worst_aa:.3f} per stage (target at most the stage's alpha {ALPHA_PER_STAGE:g}, up to
{limit:.3f} with the noise of {runs} runs: {verdict(worst_aa <= limit)}). Before the harm
tests were sized for their chance of crossing by n (issue 26 item 5), the same seed and
runs on 2026-12-06: medians 268,000 and 216,000 at 5%, 64,000 and 56,000 at 25%, none
rolled back. The primary's non-inferiority sets these stages' length, and its size is
still its last look's; the medians of an earlier table here (204,000 and 180,000 at 5%)
predate the primary's default margin of three quarters of the MDE ("The primary's margin").

The sizes of the first stage at 5% at the simulated arms' own rates (no noise:
`planned_sizes`), each target metric's treatment samples and the test that sets them:

| metric | N* | test that sets the size | planned treatment samples |
|---|---|---|---:|
{chr(10).join(size_rows)}

The power of the test that sets each size, at that size, is measured with N* tuned in
"Power at the planned n (issue 26 item 5)". The primary's planned treatment samples against
the fixed-horizon n of the test that sets them (its non-inferiority within 1.5 points,
one-sided z-test at alpha 0.05, power 0.8, 20% in both arms at 5%: {fixed:,.0f}):
{primary[False] / fixed:.2f}x with N* = 5,000, {primary[True] / fixed:.2f}x tuned. The
saving is what tuning N* can give: at n = N* the sequence's width is still about 1.3 times
the fixed-horizon z at these alphas, so a stage stays well above the fixed-horizon n; the
issue's other option, group-sequential alpha spending (O'Brien-Fleming, 0.79 times the
fixed n on average in the study), is not done (it needs a stage's maximum n fixed in
advance, which the gates' max_hold does not give).
"""


def planned_sizes(split_bp: int) -> list[Sized]:
    """The first stage's sizes (benchmarks/gate_sim.py::first_stage_plan) at the simulated
    control arm's true rates and moments, without noise: 10^6 requests' expected sums."""
    exp = first_stage_plan(split_bp)
    plan = exp.rollout
    assert plan is not None
    arm, n = Arm(), 1_000_000
    sigma = 0.47  # benchmarks/rollout_sim.py's latency: lognormal, mean arm.latency
    answered = n * (1 - arm.error)
    sums = {
        "error": ClusteredSums.independent(n, n * arm.error, n * arm.error),
        "latency": ClusteredSums.independent(
            round(answered),
            answered * arm.latency,
            answered * arm.latency**2 * math.exp(sigma**2),
        ),
        "converted": ClusteredSums.independent(
            round(answered), answered * arm.converted, answered * arm.converted
        ),
    }
    _needs, sized = samples_needed(plan, exp, sums, {}, split_bp / 10_000)
    return [entry for entry in sized if isinstance(entry, Sized)]


LATE_PLAN: dict[str, object] = {**ONE_STAGE, "stages": [50, 100], "min_duration": "1s"}


def late_outcomes(
    *,
    runs: int,
    seed: int,
    maturity: bool,
    treatment_rate: float = 0.2,
    window: int = 300,
    control_delay: float = 120.0,
    treatment_delay: float = 30.0,
    per_tick: int = 100,
    ticks: int = 1500,
) -> dict[str, float]:
    """Shares of one-stage rollouts (50%, alpha 0.05) that ended each way when the outcomes
    arrive late: the control converts 20% of decisions in the end, the treatment
    `treatment_rate`; a conversion is posted after Exp(mean `control_delay` ticks) in the
    control, Exp(`treatment_delay`) in the treatment (at most `window`), a non-conversion at
    `window` ("none within the window"). Counted as they arrive (`maturity` False), early
    looks see conversions before non-conversions, the sooner arm's first; with `maturity:
    window` only decisions `window` ticks old count, with all their outcomes."""
    exp = experiment(LATE_PLAN)
    plan = exp.rollout
    assert plan is not None
    rng = np.random.default_rng(seed)
    ends = {"rolled_back": 0.0, "continued": 0.0, "undecided": 0.0}
    horizon = ticks + window + 1
    for _ in range(runs):
        count = np.zeros((2, horizon))  # outcomes arriving at each tick, per arm
        ones = np.zeros((2, horizon))
        decided = np.zeros((2, horizon))  # per arm: decisions at each tick, and conversions
        converted_at = np.zeros((2, horizon))
        end = "undecided"
        for tick in range(1, ticks + 1):
            treated = int(rng.binomial(per_tick, 0.5))
            for arm, n, mean, rate in (
                (0, per_tick - treated, control_delay, 0.2),
                (1, treated, treatment_delay, treatment_rate),
            ):
                converts = int(rng.binomial(n, rate))
                delays = np.minimum(np.ceil(rng.exponential(mean, converts)), window)
                np.add.at(count[arm], tick + delays.astype(np.int64), 1)
                np.add.at(ones[arm], tick + delays.astype(np.int64), 1)
                count[arm, tick + window] += n - converts
                decided[arm, tick] += n
                converted_at[arm, tick] += converts
            if maturity:  # decisions at least `window` old, with every outcome of theirs
                seen_n = decided[:, : max(0, tick - window) + 1].sum(axis=1)
                seen_1 = converted_at[:, : max(0, tick - window) + 1].sum(axis=1)
            else:
                seen_n = count[:, : tick + 1].sum(axis=1)
                seen_1 = ones[:, : tick + 1].sum(axis=1)
            arms = [
                {"converted": ClusteredSums.independent(int(n), float(k), float(k))} if n else {}
                for n, k in zip(seen_n, seen_1, strict=True)
            ]
            decision = decide(plan, exp, StageInputs(float(tick), 0, 0.0, 5000, arms[0], arms[1]))
            if decision.verdict in ("rollback", "continue"):
                end = "rolled_back" if decision.verdict == "rollback" else "continued"
                break
        ends[end] += 1 / runs
    return ends


def maturity_section(runs: int) -> str:
    started = time.perf_counter()
    rows = []
    found = {}
    for name, rate in (("A/A (equal in the end)", 0.2), ("4 points worse", 0.16)):
        for maturity in (False, True):
            found[(rate, maturity)] = ends = late_outcomes(
                runs=runs, seed=2608, maturity=maturity, treatment_rate=rate
            )
            rows.append(
                f"| {name} | {'300 ticks' if maturity else 'none (as they arrive)'} "
                f"| {ends['continued']:.1%} | {ends['rolled_back']:.1%} "
                f"| {ends['undecided']:.1%} |"
            )
            print(rows[-1], flush=True)
    aa_rolled = found[(0.2, True)]["rolled_back"]
    worse_shipped = found[(0.16, True)]["continued"]
    return f"""## Issue 26 item 1: maturity window

`python -m benchmarks.stage_sim maturity {runs}` on {time.strftime("%Y-%m-%d")}, seed 2608
({time.perf_counter() - started:.0f} s in all). One compared stage at 50% (alpha 0.05),
primary converted (MDE 2 points), 100 decisions a 1 s tick, {runs} stages a row, at most
1,500 ticks: the control converts 20% of decisions in the end, a conversion posted after
Exp(mean 120 ticks); the treatment converts sooner (Exp(mean 30 ticks)), at 20% (A/A) or
16% in the end; every conversion within 300 ticks, a non-conversion posted at 300 ticks
("none within the window"). Counted as they arrive, early looks see conversions before
non-conversions (both arms near 100%) and the stage continues on outcomes that are not
yet what they will be; with `maturity` (here 300 ticks; `maturity: 5m` in the YAML) only
decisions 300 ticks old count, with all their outcomes (`control/maturing.py` holds the
younger ones).

| scenario | maturity window | continued | rolled back | undecided |
|---|---|---:|---:|---:|
{chr(10).join(rows)}

With the window: the worse model continued {worse_shipped:.1%} (target 0%:
{verdict(worse_shipped == 0)}), the equal one rolled back {aa_rolled:.1%} (target at most
alpha = 5%: {verdict(aa_rolled <= 0.05)}). In the running system the window needs each
outcome's decision time: the history's record (by `request_id`) or the item's
`decided_at`; outcomes of decisions younger than the window wait in the statistics
worker's memory (bounded; lost on a restart: replaying them from the history store is not
done).
"""


def _fixed_horizon_treatment(
    rate_a: float, rate_b: float, share: float, *, alpha: float, power: float, equal: bool
) -> float:
    """Treatment samples of a one-sided fixed-horizon z-test of rate_b against rate_a: a
    harm test's, or with `equal` a non-inferiority test's (both arms truly at rate_a, the
    margin rate_a - rate_b)."""
    z = float(special.ndtri(1 - alpha) + special.ndtri(power))
    truth = rate_a if equal else rate_b
    spread = rate_a * (1 - rate_a) / (1 - share) + truth * (1 - truth) / share
    return z * z * spread / (rate_a - rate_b) ** 2 * share


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:,.1f} h"


def main() -> None:
    if sys.argv[1:2] == ["faster"]:
        text = faster_section(int(sys.argv[2]) if len(sys.argv) > 2 else 200)
        write_section("stage-sim-faster", text)
        print(text)
    if sys.argv[1:2] == ["maturity"]:
        text = maturity_section(int(sys.argv[2]) if len(sys.argv) > 2 else 200)
        write_section("stage-sim-maturity", text)
        print(text)
    if sys.argv[1:2] == ["users"]:
        text = users_section()
        write_section("stage-sim-users", text)
        print(text)


if __name__ == "__main__":
    main()
