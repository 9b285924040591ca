"""The holdout at the last stage (issue 26 item 7), by simulation through the pure gate
function (control/rollout/gates.py::decide), with and without a holdout.

Each case is small enough to run seeded in the tests (tests/test_holdout.py); full size is
`python -m benchmarks.holdout_sim [runs]`, which writes the "holdout" section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping

import numpy as np

from abgate.config.model import ExperimentConfig
from benchmarks.common import verdict, write_section
from benchmarks.rollout_sim import PLAN, Arm, Behaviour, experiment, simulate

WITHOUT: dict[str, object] = {
    **PLAN,
    "holdout": False,
}  # the last stage at 100%: breaker, incidents, SLOs
WITH: dict[str, object] = {
    **PLAN,
    "holdout": {"percentage": 5},
}  # the default for a plan with a primary
SAME = Arm()  # the simulation's control: 1% errors, 50 ms, 20% converted
ACCURATE = Arm(converted=0.90)  # control: 90% accurate
# 60 points worse on accuracy, twice as slow: what the issue saw complete at 100%
MUCH_WORSE = Arm(converted=0.30, latency=0.100)
NOVELTY_BOOST = 0.08  # +6 points at first: +8 over the long run's -2
LONG_RUN = -0.02


def novelty(fade_ticks: float, base: float = 0.20) -> Callable[[int, int], Arm]:
    """A treatment 6 points better at first, fading (exponentially, time constant
    `fade_ticks` from the rollout's start) to 2 points worse: better than control until
    about 1.39 x `fade_ticks`."""

    def arm(tick: int, _stage: int) -> Arm:
        boost = NOVELTY_BOOST * math.exp(-tick / fade_ticks)
        return Arm(converted=base + LONG_RUN + boost)

    return arm


def ends(
    treatment: Behaviour,
    plan: Mapping[str, object],
    *,
    runs: int,
    seed: int,
    control: Arm = SAME,
    start_stage: int = 0,
    max_ticks: int = 3000,
) -> dict[str, float]:
    """Share of rollouts that ended completed, rolled back (and rolled back at the last
    stage: `holdout`) or escalated, 400 requests a 1 s tick."""
    config: ExperimentConfig = experiment(dict(plan))
    rng = np.random.default_rng(seed)
    out = {"completed": 0.0, "rolled_back": 0.0, "escalated": 0.0, "last_stage": 0.0}
    assert config.rollout is not None
    last = len(config.rollout.stages) - 1
    for _ in range(runs):
        end, stage, _ = simulate(
            rng,
            treatment,
            control=control,
            config=config,
            start_stage=start_stage,
            max_ticks=max_ticks,
        )
        out[end] += 1 / runs
        if end != "completed" and stage == last:
            out["last_stage"] += 1 / runs
    return out


NOVELTY = "novelty +6 fading to -2 (whole ramp, bake 1200 s)"
LONGER_BAKE = "novelty +6 fading to -2 (whole ramp, bake 3000 s)"
# (name, treatment, control, start stage, plan's bake, seed, most ticks)
CASES: list[tuple[str, Behaviour, Arm, int, str, int, int]] = [
    ("A/A (whole ramp)", SAME, SAME, 0, "10s", 2671, 3000),
    ("better (+5 points, whole ramp)", Arm(converted=0.25), SAME, 0, "10s", 2672, 3000),
    (
        "60 points worse, latency doubled, at the last stage",
        MUCH_WORSE,
        ACCURATE,
        4,
        "10s",
        2673,
        3000,
    ),
    (NOVELTY, novelty(650), SAME, 0, "1200s", 2674, 3000),
    (LONGER_BAKE, novelty(650), SAME, 0, "3000s", 2675, 5000),
]


HEADER = (
    "| case | holdout | completed (shipped) | rolled back | escalated "
    "| stopped at the last stage | seed |"
)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    started = time.perf_counter()
    rows = []
    found: dict[str, dict[str, dict[str, float]]] = {}
    for name, treatment, control, start, bake, seed, most in CASES:
        found[name] = {}
        for label, plan in (("without", WITHOUT), ("with a 5% holdout", WITH)):
            share = ends(
                treatment,
                {**plan, "bake": bake},
                runs=runs,
                seed=seed,
                control=control,
                start_stage=start,
                max_ticks=most,
            )
            found[name][label] = share
            rows.append(
                f"| {name} | {label} | {share['completed']:.1%} | {share['rolled_back']:.1%} | "
                f"{share['escalated']:.1%} | {share['last_stage']:.1%} | {seed} |"
            )
            print(rows[-1], flush=True)
    held = "with a 5% holdout"
    aa = found["A/A (whole ramp)"][held]
    worse = found["60 points worse, latency doubled, at the last stage"][held]
    fading = found[NOVELTY][held]
    longer = found[LONGER_BAKE][held]
    text = f"""## Issue 26 item 7: holdout at 100%

`python -m benchmarks.holdout_sim {runs}` on {time.strftime("%Y-%m-%d")}
({time.perf_counter() - started:.0f} s in all), {runs} rollouts a row, seeds in the table.
Whole rollouts through `decide` on the plan of benchmarks/rollout_sim.py (stages 5, 25, 50,
75, 100; primary `converted`, MDE 2 points; guardrails error +1 point and latency +10%; SLO
error rate 5%; alpha 0.05), 400 requests a 1 s tick, at most 3,000 ticks (5,000 with the
3,000 s bake; undecided then: escalated). "Without" is `holdout: false` (the last stage at
100%: breaker, incidents and SLOs, then completed after the bake, as every plan did before);
"with" keeps 5% on control through the last stage's bake, compared by the same gates,
released to 100% once they pass.
The 60-points-worse model starts at the last stage (promoted there by a person, or a plan
`stages: [100]`; control 90% accurate). The novelty effect fades with time from the rollout's
start (time constant 650 ticks: better than control until tick ~900, about where the ramp
reaches its last stage), and the plan bakes 1,200 s or 3,000 s.

{HEADER}
|---|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

- A/A with the holdout: {aa["completed"]:.1%} completed, {aa["rolled_back"]:.1%} rolled back
  over the whole ramp (holdout included; target at most alpha = 5%:
  {verdict(aa["rolled_back"] <= 0.05)}).
- 60 points worse with doubled latency: shipped {worse["completed"]:.1%} with the holdout
  (target 0: {verdict(worse["completed"] == 0)}).
- Novelty effect: caught at the last stage (rolled back or escalated there) in
  {fading["last_stage"]:.1%} of rollouts with the holdout and a 1,200 s bake (shipped
  {fading["completed"]:.1%}), {longer["last_stage"]:.1%} with a 3,000 s bake (shipped
  {longer["completed"]:.1%}); without a holdout it always shipped. With the shorter bake
  some ship because the holdout is compared on its whole phase: the novelty's tail at the
  start of the last stage is in its sums, so the phase's average loss is smaller than the
  long run's 2 points and can be shown within the primary's margin (by default three
  quarters of the MDE, 1.5 points) before the harm test has the power to show the loss; a
  longer bake weighs the long run more.

Alpha: the plan's alpha is split over every stage that tests (the four compared stages and
the holdout: 0.05 / 5 each, each stage's tests one Holm family), so the ramp spends alpha
once; without a holdout the 100% stage's SLO tests are one of those stages too (before,
they ran at the full alpha on top of the ramp's). The sections above that simulate this
plan were measured before the holdout, at 0.05 / 4 per stage (the compared stages only).
"""
    write_section("holdout", text)
    print(text)


if __name__ == "__main__":
    main()
