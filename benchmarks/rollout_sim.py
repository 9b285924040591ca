"""Simulated rollouts through the pure gate function (control/rollout/gates.py).

Each run drives one rollout tick by tick from 5% to 100% on synthetic traffic (errors,
latency and a 0/1 business metric per arm), exactly as the controller would call `decide`,
and reports how it ended. Run: `python -m benchmarks.rollout_sim [runs]`; the table goes to
benchmarks/RESULTS.md by hand. tests/test_rollout_gates.py runs a smaller version.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import yaml

from abgate.config.model import Config, ExperimentConfig
from abgate.config.parse import parse_config
from abgate.control.rollout.gates import StageInputs, decide
from abgate.control.stats.clusters import ClusteredSums
from abgate.state.measurements import Sums
from benchmarks.common import verdict, write_section

PLAN = {
    "stages": [5, 25, 50, 75, 100],
    "min_duration": "10s",
    "max_hold": "1h",
    "tick": "1s",
    "bake": "10s",
    "primary": {"metric": "converted", "minimum_detectable_effect": 0.02},
    "guardrails": [{"metric": "error", "margin": 0.01}, {"metric": "latency", "margin": "10%"}],
    "slo": {"error_rate": "5%"},
}


def experiment(plan: dict[str, object] | None = None, **settings: object) -> ExperimentConfig:
    """The simulated experiment with `plan`; `settings` add to the experiment (a sticky
    key, say)."""
    return config(plan, **settings).experiments["e"]


def config(plan: dict[str, object] | None = None, **settings: object) -> Config:
    """The whole config of `experiment`, experiment "e" (what the statistics worker reads)."""
    document = {
        "upstreams": {"a": {"url": "http://127.0.0.1:1"}, "b": {"url": "http://127.0.0.1:2"}},
        "routes": [{"prefix": "/", "experiment": "e"}],
        "experiments": {
            "e": {
                "control": "a",
                "treatment": "b",
                "percentage": 0,
                "metrics": {"converted": {"type": "binary", "direction": "higher"}},
                "rollout": plan or PLAN,
                **settings,
            }
        },
    }
    return parse_config(yaml.safe_dump(document), "<sim>")


@dataclass(frozen=True)
class Arm:
    error: float = 0.01
    latency: float = 0.050  # mean seconds (lognormal, sd about half the mean)
    converted: float = 0.20


Outcome = tuple[int, int, int, int]  # (due tick, stage, count, conversions)
# An arm that changes during the rollout: its behaviour at (tick, stage index), e.g. a
# novelty effect fading with time (benchmarks/holdout_sim.py)
Behaviour = Arm | Callable[[int, int], Arm]


def _add(
    sums: dict[str, Sums],
    rng: np.random.Generator,
    arm: Arm,
    n: int,
    *,
    reported: float = 1.0,
    pending: list[Outcome] | None = None,
    due: int = 0,
    stage: int = 0,
) -> None:
    """n requests of `arm`: their errors and latency at once; their business outcomes
    (converted) for the `reported` share of the answered ones, at once or, with `pending`,
    queued to arrive at tick `due`."""
    if n == 0:
        return
    errors = rng.binomial(n, arm.error)
    ok = n - errors
    latency = rng.lognormal(np.log(arm.latency) - 0.11, 0.47, ok)
    outcomes = ok if reported >= 1 else int(rng.binomial(ok, reported))
    converted = rng.binomial(outcomes, arm.converted)
    for name, count, total, total_sq in (
        ("error", n, float(errors), float(errors)),
        ("latency", ok, float(latency.sum()), float((latency**2).sum())),
    ):
        _put(sums, name, count, total, total_sq)
    if pending is None:
        _put(sums, "converted", outcomes, float(converted), float(converted))
    elif outcomes:
        pending.append((due, stage, outcomes, int(converted)))


def _put(sums: dict[str, Sums], name: str, count: int, total: float, total_sq: float) -> None:
    s = sums.setdefault(name, Sums())
    s.count += count
    s.total += total
    s.total_sq += total_sq


def _arrived(pending: list[Outcome], tick: int, stage: int, sums: dict[str, Sums]) -> list[Outcome]:
    """Outcomes due by `tick` land in their decision's stage if it is still the current one
    (a finished phase is not compared again); the rest wait."""
    waiting = []
    for entry in pending:
        due, of_stage, count, conversions = entry
        if due > tick:
            waiting.append(entry)
        elif of_stage == stage:
            _put(sums, "converted", count, float(conversions), float(conversions))
    return waiting


def _independent(sums: dict[str, Sums]) -> dict[str, ClusteredSums]:
    """Simulated requests are independent (one per user): each its own unit."""
    return {m: ClusteredSums.independent(s.count, s.total, s.total_sq) for m, s in sums.items()}


class Ending(NamedTuple):
    end: str  # completed, rolled_back or escalated
    stage: int  # the stage index reached
    ticks: int  # ticks it took


def ending(verdict: str, stage: int, tick: int) -> Ending | None:
    """How a look ended the rollout (rolled back or completed); None while it goes on."""
    if verdict == "rollback":
        return Ending("rolled_back", stage, tick)
    if verdict == "complete":
        return Ending("completed", stage, tick)
    return None


def simulate(
    rng: np.random.Generator,
    treatment: Behaviour,
    *,
    control: Arm = Arm(),
    per_tick: int = 400,
    max_ticks: int = 3000,
    config: ExperimentConfig | None = None,
    reported: float = 1.0,
    delay_ticks: int = 0,
    start_stage: int = 0,
) -> Ending:
    """How it ended (completed, rolled_back or escalated), the stage index reached, and
    the ticks it took.
    `reported`: the share of answers whose business outcome is ever posted; `delay_ticks`:
    how late the outcomes arrive; `start_stage`: where the rollout is when the simulation
    begins (the last stage: promoted there by a person)."""
    exp = config or experiment()
    plan = exp.rollout
    assert plan is not None
    stage, started = start_stage, 0.0
    sums_c: dict[str, Sums] = {}
    sums_t: dict[str, Sums] = {}
    late_c: list[Outcome] | None = [] if delay_ticks else None
    late_t: list[Outcome] | None = [] if delay_ticks else None
    for tick in range(1, max_ticks + 1):
        now = tick * plan.tick
        bp = plan.live_bp(stage)
        n_t = int(rng.binomial(per_tick, bp / 10_000))
        due = tick + delay_ticks
        _add(
            sums_c,
            rng,
            control,
            per_tick - n_t,
            reported=reported,
            pending=late_c,
            due=due,
            stage=stage,
        )
        arm = treatment(tick, stage) if callable(treatment) else treatment
        _add(sums_t, rng, arm, n_t, reported=reported, pending=late_t, due=due, stage=stage)
        if late_c is not None and late_t is not None:
            late_c = _arrived(late_c, tick, stage, sums_c)
            late_t = _arrived(late_t, tick, stage, sums_t)
        inputs = StageInputs(now, stage, started, bp, _independent(sums_c), _independent(sums_t))
        decision = decide(plan, exp, inputs)
        if (ended := ending(decision.verdict, stage, tick)) is not None:
            return ended
        if decision.verdict == "continue":
            stage, started = stage + 1, now
            sums_c, sums_t = {}, {}
        elif now - started > plan.max_hold:
            return Ending("escalated", stage, tick)
    return Ending("escalated", stage, max_ticks)


def table(runs: int, seed: int = 1) -> list[tuple[str, dict[str, float], float]]:
    rng = np.random.default_rng(seed)
    scenarios = {
        "A/A (treatment = control)": Arm(),
        "better (converted +5 points)": Arm(converted=0.25),
        "worse errors (1% -> 4%)": Arm(error=0.04),
        "worse latency (+30%)": Arm(latency=0.065),
        "worse business (converted -5 points)": Arm(converted=0.15),
    }
    out: list[tuple[str, dict[str, float], float]] = []
    for name, arm in scenarios.items():
        ends: dict[str, float] = {"completed": 0, "rolled_back": 0, "escalated": 0}
        stages = 0.0
        for _ in range(runs):
            end, stage, _ = simulate(rng, arm)
            ends[end] += 1 / runs
            stages += stage / runs
        out.append((name, ends, stages))
    return out


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    results = table(runs)
    lines = [
        f"| scenario ({runs} rollouts each) | completed | rolled back | escalated | "
        "mean stage index at the end |",
        "|---|---|---|---|---|",
    ]
    for name, ends, stage in results:
        lines.append(
            f"| {name} | {ends['completed']:.1%} | {ends['rolled_back']:.1%} | "
            f"{ends['escalated']:.1%} | {stage:.2f} |"
        )
    false_rollbacks = results[0][1]["rolled_back"]
    rows = "\n".join(lines)
    text = f"""## Rollout gates by simulation (issue 12)

`python -m benchmarks.rollout_sim {runs}` on {time.strftime("%Y-%m-%d")}, seed 1: each rollout
runs the pure gate function tick by tick (400 requests a tick, 1 s ticks, stages 5, 25, 50, 75, 100,
min_duration 10 s, bake 10 s; control: 1% errors, lognormal latency with mean 50 ms, 20%
converted; guardrails error +1 point and latency +10%, primary converted with MDE 2 points,
alpha 0.05). Stage index 4 is 100%; a rollback at index 0 is at the 5% stage.

{rows}

A/A rollouts rolled back: {false_rollbacks:.1%}, target at most alpha (5%):
{verdict(false_rollbacks <= 0.05)}.
"""
    write_section("rollout-gates", text)
    print(text)


if __name__ == "__main__":
    main()
