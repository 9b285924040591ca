"""A/A over the whole ramp with users (issue 26, "done when"): whole rollouts through the
pure gate function (control/rollout/gates.py::decide), the holdout at 100% included, with
a fixed population of sticky users whose requests are alike (a user's own conversion,
error and latency propensities) and whose activity is even, skewed or heavy-tailed, at
3,000 and 200,000 requests an hour, on a low and a high base rate.

What the controller would see is built as the shipped code path sums it: each arm's
requests in 128 clusters of users (state/measurements.py's CLUSTERS, by the user's hash),
the delta method over them (ClusteredSums), distinct users for the sample-ratio check and
the sizing in users. A user keeps their draw (`draw < percentage` is treatment) as the
share grows, as the sticky hash does.

Small seeded cells run in the tests (tests/test_aa_ramp.py); full size is
`python -m benchmarks.aa_ramp [runs]`, which writes the "aa-ramp" section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

from abgate.config.model import ExperimentConfig
from abgate.control.measured import by_arm, of_phase
from abgate.control.rollout.gates import StageInputs, decide
from abgate.control.stats.clusters import ClusteredSums
from abgate.state.measurements import CLUSTERS, CROSS, PRE, MeasureKey, Sums
from benchmarks.common import verdict, write_section
from benchmarks.rollout_sim import Ending, ending, experiment

METRICS = ("error", "latency", "converted", "converted" + PRE, "converted" + CROSS)
PRE_SESSIONS = 20  # the covariate: a user's conversion rate over their sessions before
HEADER = (
    "| traffic | base rate | users | rolled back | completed | held "
    "| median hours to complete | mean stage reached | seed |\n"
    "|---|---|---|---:|---:|---:|---:|---:|---:|"
)
HOUR = 3600.0


@dataclass(frozen=True)
class Users:
    """A fixed population: how active each user is and how alike their requests are."""

    name: str
    activity: str  # even | lognormal | pareto: the spread of requests per user
    spread: float  # concentration of the per-user propensities (Beta); smaller: more alike per user


EVEN = Users("even, independent", "even", 0.0)
SKEWED = Users("skewed (lognormal activity, sigma 1.5)", "lognormal", 20.0)
HEAVY = Users("heavy-tailed (Pareto activity, alpha 1.5)", "pareto", 5.0)


@dataclass(frozen=True)
class Traffic:
    name: str
    per_hour: float
    users: int  # the population's size
    tick: float  # seconds between the controller's looks
    hours: float  # the longest a run is followed
    mde_share: float  # the plan's minimum effect, a share of the base rate: what it affords


LOW = Traffic("3,000 requests/h", 3_000.0, 200_000, 300.0, 24 * 21, 0.5)
HIGH = Traffic("200,000 requests/h", 200_000.0, 1_000_000, 60.0, 24 * 4, 0.25)


def plan(base: float, traffic: Traffic) -> dict[str, object]:
    """The plan a team would declare for this traffic: the default ramp, holdout and
    alpha; a minimum effect it can afford (`traffic.mde_share` of the base rate)."""
    mde = base * traffic.mde_share
    return {
        "stages": [5, 25, 50, 75, 100],
        "min_duration": f"{int(traffic.tick * 2)}s",
        "max_hold": f"{int(traffic.hours)}h",
        "tick": f"{int(traffic.tick)}s",
        "bake": "1h",
        "primary": {"metric": "converted", "minimum_detectable_effect": round(mde, 4)},
        "guardrails": [{"metric": "error", "margin": 0.01}, {"metric": "latency", "margin": "10%"}],
        "slo": {"error_rate": "5%"},
    }


class Population:
    """Each user's draw, cluster, activity and propensities, fixed for the run."""

    def __init__(self, rng: np.random.Generator, users: Users, size: int, base: float) -> None:
        self.size = size
        self.draw = rng.integers(0, 10_000, size)
        self.cluster = rng.integers(0, CLUSTERS, size)
        if users.activity == "even":
            weight = np.ones(size)
        elif users.activity == "lognormal":
            weight = rng.lognormal(0.0, 1.5, size)
        else:
            weight = rng.pareto(1.5, size) + 1.0
        self.cumulative = np.cumsum(weight / weight.sum())
        self.converted = _propensity(rng, base, users.spread, size)
        # each user's conversion rate before the experiment: CUPED's covariate
        self.before = rng.binomial(PRE_SESSIONS, self.converted) / PRE_SESSIONS
        self.error = _propensity(rng, 0.01, users.spread, size)
        # a user's own typical latency: mean 50 ms, users differing by about 40%
        sigma = 0.4 if users.spread else 0.0
        self.latency_mu = np.log(0.050) - 0.11 + rng.normal(-sigma * sigma / 2, sigma, size)

    def requests(self, rng: np.random.Generator, n: int) -> np.ndarray:
        index = np.searchsorted(self.cumulative, rng.random(n))
        return np.minimum(index, self.size - 1)


def _propensity(rng: np.random.Generator, mean: float, spread: float, size: int) -> np.ndarray:
    if not spread:
        return np.full(size, mean)
    return rng.beta(mean * spread, (1 - mean) * spread, size)


class Phase:
    """One stage's sums per arm (0 control, 1 treatment), per metric, per cluster."""

    def __init__(self, size: int) -> None:
        self.n = np.zeros((len(METRICS), 2, CLUSTERS))
        self.s = np.zeros((len(METRICS), 2, CLUSTERS))
        self.s2 = np.zeros((len(METRICS), 2, CLUSTERS))
        self.seen = np.zeros(size, dtype=bool)
        self.users = [0, 0]  # distinct users seen, per arm

    def visit(self, who: np.ndarray, arm: np.ndarray) -> None:
        """Count the users new to this phase (a user's arm is fixed within a phase)."""
        new = ~self.seen[who]
        fresh, first = np.unique(who[new], return_index=True)
        self.seen[fresh] = True
        treated = int(arm[new][first].sum())
        self.users[0] += fresh.size - treated
        self.users[1] += treated

    def add(self, metric: int, arm: np.ndarray, cluster: np.ndarray, value: np.ndarray) -> None:
        at = arm * CLUSTERS + cluster
        self.n[metric] += np.bincount(at, minlength=2 * CLUSTERS).reshape(2, CLUSTERS)
        self.s[metric] += np.bincount(at, value, 2 * CLUSTERS).reshape(2, CLUSTERS)
        self.s2[metric] += np.bincount(at, value * value, 2 * CLUSTERS).reshape(2, CLUSTERS)

    def sums(self, arm: int) -> dict[str, ClusteredSums]:
        """Built directly from the arrays: the covariates' sums, if any, are left aside."""
        out = {}
        for m, name in enumerate(METRICS[:3]):
            n, s = self.n[m, arm], self.s[m, arm]
            if n.sum() == 0:
                continue
            out[name] = ClusteredSums(
                int(n.sum()),
                float(s.sum()),
                float(self.s2[m, arm].sum()),
                int((n > 0).sum()),
                float((n * n).sum()),
                float((s * s).sum()),
                float((n * s).sum()),
            )
        return out

    def stored(self) -> dict[MeasureKey, Sums]:
        """The sums as the measurement store would hold them (phase 1, arms a and b)."""
        out = {}
        for m, name in enumerate(METRICS):
            for arm, arm_name in enumerate(("a", "b")):
                for cluster in np.flatnonzero(self.n[m, arm]):
                    out[("e", 1, arm_name, name, int(cluster))] = Sums(
                        int(self.n[m, arm, cluster]),
                        float(self.s[m, arm, cluster]),
                        float(self.s2[m, arm, cluster]),
                    )
        return out

    def by_store(self) -> tuple[dict[str, ClusteredSums], dict[str, ClusteredSums]]:
        """Each arm's metrics through the shipped path (control/measured.py): CUPED
        adjusts `converted` where its covariates were posted."""
        arms = by_arm(self.stored())
        return of_phase(arms, 1, "a"), of_phase(arms, 1, "b")

    def units(self) -> tuple[tuple[float, float], tuple[float, float]]:
        return (float(self.users[0]), 0.0), (float(self.users[1]), 0.0)


def simulate(
    rng: np.random.Generator,
    users: Users,
    traffic: Traffic,
    base: float,
    loss: float = 0.0,
    *,
    covariate: bool = False,
    guarded: bool = True,
) -> Ending:
    """One A/A rollout (or, with `loss`, one whose treatment converts that much less): how
    it ended, the stage index reached and the ticks it took. `covariate`: each outcome is
    posted with its user's conversion rate before the experiment (CUPED); `guarded`: the
    plan has its guardrails and SLO (else it is gated on its primary alone)."""
    document = plan(base, traffic)
    if not guarded:
        document = {**document, "guardrails": [], "slo": {}}
    exp: ExperimentConfig = experiment(document, sticky=[{"header": "x-user"}])
    rollout = exp.rollout
    assert rollout is not None
    population = Population(rng, users, traffic.users, base)
    per_tick = traffic.per_hour * traffic.tick / HOUR
    stage, started = 0, 0.0
    phase = Phase(population.size)
    ticks = int(traffic.hours * HOUR / traffic.tick)
    for tick in range(1, ticks + 1):
        now = tick * traffic.tick
        bp = rollout.live_bp(stage)
        who = population.requests(rng, int(rng.poisson(per_tick)))
        arm = (population.draw[who] < bp).astype(np.int64)
        cluster = population.cluster[who]
        phase.visit(who, arm)
        erred = rng.random(who.size) < population.error[who]
        phase.add(0, arm, cluster, erred.astype(float))
        ok = ~erred
        answered, arm_ok, cluster_ok = who[ok], arm[ok], cluster[ok]
        latency = np.exp(population.latency_mu[answered] + rng.normal(0.0, 0.47, answered.size))
        phase.add(1, arm_ok, cluster_ok, latency)
        propensity = population.converted[answered] - loss * arm_ok
        converted = rng.random(answered.size) < propensity
        phase.add(2, arm_ok, cluster_ok, converted.astype(float))
        if covariate:
            before = population.before[answered]
            phase.add(3, arm_ok, cluster_ok, before)
            phase.add(4, arm_ok, cluster_ok, before * converted)
            control, treatment = phase.by_store()
        else:
            control, treatment = phase.sums(0), phase.sums(1)
        inputs = StageInputs(now, stage, started, bp, control, treatment, units=phase.units())
        decision = decide(rollout, exp, inputs)
        if (ended := ending(decision.verdict, stage, tick)) is not None:
            return ended
        if decision.verdict == "continue":
            stage, started = stage + 1, now
            phase = Phase(population.size)
    return Ending("escalated", stage, ticks)


@dataclass(frozen=True)
class Cell:
    traffic: Traffic
    base: float
    users: Users
    rolled_back: float
    completed: float
    held: float  # still holding (undecided) when the run's horizon ended
    median_hours: float  # to complete, over the completed runs (nan if none)
    mean_stage: float


def cell(traffic: Traffic, base: float, users: Users, *, runs: int, seed: int) -> Cell:
    rng = np.random.default_rng(seed)
    ends = [simulate(rng, users, traffic, base) for _ in range(runs)]
    done = [e.ticks * traffic.tick / HOUR for e in ends if e.end == "completed"]
    return Cell(
        traffic,
        base,
        users,
        sum(e.end == "rolled_back" for e in ends) / runs,
        len(done) / runs,
        sum(e.end == "escalated" for e in ends) / runs,
        float(np.median(done)) if done else float("nan"),
        float(np.mean([e.stage for e in ends])),
    )


CUPED_TRAFFIC = Traffic("200,000 requests/h", 200_000.0, 200_000, 300.0, 48, 0.1)


def cuped_table(runs: int) -> None:
    """A/A and a 2-point loss, with and without CUPED's covariate, on a plan gated on its
    primary alone (so the primary's samples set each stage's length)."""
    started = time.monotonic()
    rows = []
    seed = 2700
    for users in (SKEWED, HEAVY):
        for loss, case in ((0.0, "A/A"), (0.02, "2 points worse")):
            seed += 1
            for covariate in (False, True):
                rng = np.random.default_rng(seed)  # the same users and draws with and without
                ends = [
                    simulate(
                        rng,
                        users,
                        CUPED_TRAFFIC,
                        0.20,
                        loss,
                        covariate=covariate,
                        guarded=False,
                    )
                    for _ in range(runs)
                ]
                done = [e.ticks * CUPED_TRAFFIC.tick / HOUR for e in ends if e.end == "completed"]
                hours = f"{np.median(done):.1f}" if done else "-"
                rows.append(
                    f"| {users.name} | {case} | {'with' if covariate else 'without'} | "
                    f"{sum(e.end == 'completed' for e in ends) / runs:.1%} | "
                    f"{sum(e.end == 'rolled_back' for e in ends) / runs:.1%} | "
                    f"{sum(e.end == 'escalated' for e in ends) / runs:.1%} | {hours} | {seed} |"
                )
                print(rows[-1], flush=True)
    text = f"""## CUPED: outcomes adjusted by a pre-experiment covariate (issue 26 item 6)

`python -m benchmarks.aa_ramp cuped {runs}` on {time.strftime("%Y-%m-%d")}
({time.monotonic() - started:.0f} s in all), {runs} rollouts a row; each pair of rows has
the same seed (the same users and draws), without and with the covariate. Whole rollouts
through `decide` as in the whole-ramp table (`python -m benchmarks.aa_ramp`;
200,000 requests/h from 200,000 sticky users,
looked at every 300 s, followed for 48 h; the default ramp and 5% holdout), on a plan gated
on its primary alone (`converted`, base 20%, minimum effect 2 points; no guardrails or SLO,
so the primary's samples set each stage's length). "With": each outcome is posted with its
user's conversion rate over their {PRE_SESSIONS} sessions before the experiment
(`covariate`), and the sums go through the shipped path (control/measured.py `by_arm`,
control/stats/cuped.py), which adjusts `converted` by it.

| users | treatment | covariate | completed | rolled back | held | median hours to complete | seed |
|---|---|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}
"""
    write_section("cuped", text)
    print(text)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "cuped":
        cuped_table(int(sys.argv[2]) if len(sys.argv) > 2 else 40)
        return
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    started = time.monotonic()
    seed = 2680
    rows, cells = [], []
    for traffic in (LOW, HIGH):
        for base in (0.02, 0.20):
            for users in (EVEN, SKEWED, HEAVY):
                seed += 1
                c = cell(traffic, base, users, runs=runs, seed=seed)
                cells.append(c)
                hours = "-" if c.completed == 0 else f"{c.median_hours:.1f}"
                rows.append(
                    f"| {traffic.name} | {base:.0%} | {users.name} | {c.rolled_back:.1%} | "
                    f"{c.completed:.1%} | {c.held:.1%} | {hours} | {c.mean_stage:.2f} | {seed} |"
                )
                print(rows[-1], flush=True)
    worst = max(c.rolled_back for c in cells)
    text = f"""## A/A over the whole ramp, with users (issue 26, done when)

`python -m benchmarks.aa_ramp {runs}` on {time.strftime("%Y-%m-%d")}
({time.monotonic() - started:.0f} s in all), {runs} A/A rollouts a row, seeds in the table.
Whole rollouts through `decide`, the default ramp (5, 25, 50, 75, 100) with the default 5%
holdout at the last stage (compared by the same gates, then released), alpha 0.05 split over
the five tested stages; guardrails error +1 point and latency +10%; SLO error rate 5%.
A fixed population of sticky users (200,000 at 3,000 requests/h, 1,000,000 at 200,000/h), each
with their own conversion, error and latency propensities (Beta with concentration 20 for
skewed and 5 for heavy-tailed; none for even) and activity (even, lognormal sigma 1.5, or
Pareto alpha 1.5: a few users make much of the traffic). Summed as the sidecar sums them (128
clusters of users, the delta method; distinct users for the sample-ratio check and the
sizing). The plan's minimum effect is half the base rate at 3,000 requests/h (what that
traffic can afford) and a quarter of it at 200,000; the controller looks every 300 s and
60 s, and a run is followed for 21 days and 4 days. "Held" is still undecided then
(the controller escalates a stage that cannot finish at the observed rate).

{HEADER}
{chr(10).join(rows)}

Worst share of A/A rollouts rolled back: {worst:.1%} (target at most alpha = 5%:
{verdict(worst <= 0.05)}).
"""
    write_section("aa-ramp", text)
    print(text)


if __name__ == "__main__":
    main()
