"""The rollout gates under what a rollout meets in practice (issue 26), by simulation through
the pure gate function (control/rollout/gates.py::decide).

Each function here is small enough to run seeded in the tests (tests/test_gate_sim.py) and
is run full size by `python -m benchmarks.gate_sim`, which writes the "gate-sim-*" sections of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from benchmarks.common import verdict, write_section
from benchmarks.rollout_sim import experiment
from control.rollout.gates import StageInputs, decide
from control.stats.clusters import ClusteredSums

# One stage compared (5% then 100%): the stage's harm tests run at the plan's whole alpha,
# so the share of false rollbacks reads directly against alpha = 0.05.
ONE_STAGE: dict[str, object] = {
    "stages": [5, 100],
    "min_duration": "10s",
    "max_hold": "1h",
    "tick": "1s",
    "bake": "10s",
    "primary": {"metric": "converted", "minimum_detectable_effect": 0.02},
    "guardrails": [],
}


def aa_small_split_rollbacks(
    split_bp: int, base: float, *, runs: int, per_tick: int, ticks: int, seed: int
) -> float:
    """Share of A/A stages (both arms converting at `base`, higher is better) that `decide`
    rolls back for harm on the primary, looked at every tick of `per_tick` requests."""
    plan_doc = {**ONE_STAGE, "stages": [split_bp / 100, 100]}
    exp = experiment(plan_doc)
    plan = exp.rollout
    assert plan is not None
    rng = np.random.default_rng(seed)
    rolled_back = 0
    for _ in range(runs):
        n = [0, 0]
        x = [0, 0]
        for tick in range(1, ticks + 1):
            treated = int(rng.binomial(per_tick, split_bp / 10_000))
            for arm, count in ((0, per_tick - treated), (1, treated)):
                n[arm] += count
                x[arm] += int(rng.binomial(count, base))
            control = {"converted": ClusteredSums.independent(n[0], float(x[0]), float(x[0]))}
            treatment = {"converted": ClusteredSums.independent(n[1], float(x[1]), float(x[1]))}
            inputs = StageInputs(float(tick), 0, 0.0, split_bp, control, treatment)
            if decide(plan, exp, inputs).verdict == "rollback":
                rolled_back += 1
                break
    return rolled_back / runs


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    started = time.perf_counter()
    rows = []
    worst = 0.0
    for split_bp in (100, 500):
        for base in (0.01, 0.05):
            share = aa_small_split_rollbacks(
                split_bp, base, runs=runs, per_tick=100, ticks=400, seed=2601
            )
            worst = max(worst, share)
            rows.append(f"| {split_bp / 100:g}% | {base:.0%} | {share:.3f} |")
            print(rows[-1], flush=True)
    text = f"""## Rollout gates in practice (issue 26)

`python -m benchmarks.gate_sim {runs}` on {time.strftime("%Y-%m-%d")}, seed 2601
({time.perf_counter() - started:.0f} s in all).

### False rollbacks at small splits on low base rates (item 2)

A/A stages (both arms convert at the base rate; "higher is better"), {runs} per row, each
looked at by `decide` every tick of 100 requests for 400 ticks (40,000 requests), one
compared stage so the harm test runs at the plan's alpha = 0.05. Share rolled back for harm
on the primary. Before the fix (each arm's own Agresti-Caffo variance) the issue measured
7.3-8.9% at these splits; the gate now calls the worker's test (`rates_p`: the score
variance under the null and the worker's burn-in).

| treatment share | base rate | rolled back |
|---|---|---:|
{chr(10).join(rows)}

Worst {worst:.3f} (target at most alpha = 0.05: {verdict(worst <= 0.05)}).
"""
    write_section("gate-sim-small-splits", text)
    print(text)


if __name__ == "__main__":
    main()
