"""The reports after a rollout read the stages that had a control arm, not the 100% phase
(or, after a rollback, the 0% one); simulated users (control/simulate.py) drive a real
rollout to its end."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from abgate.control.rollout_cli import report
from abgate.control.serve import Embedded, embedded
from abgate.control.simulate import SCENARIOS, Simulation, SimulationPlan
from scripts.demo_agent import Behaviour, create_app
from tests.servers import make_config, serve_app
from tests.test_rollout import FAST

PLAN = {
    **FAST,
    "stages": [25, 50, 100],
    "primary": {"metric": "accuracy", "minimum_detectable_effect": 0.1},
    "holdout": {"percentage": 25},  # 75:25, sized like the 25% stage (5% would take minutes)
}


@contextlib.asynccontextmanager
async def stack(ml_latency_ms: float = 0.0) -> AsyncIterator[Embedded]:
    async with (
        serve_app(create_app("deterministic", Behaviour(latency_ms=4.0))) as control,
        serve_app(create_app("ml", Behaviour(latency_ms=ml_latency_ms), seed=3)) as treatment,
    ):
        config = make_config(
            {"control": control, "treatment": treatment},
            percentage=0,
            experiment={"rollout": PLAN},
            # One loop runs the agents, both halves and the simulated users here (two
            # processes in `abgate run`): a busy machine can stall it past the 1 s default,
            # and the rollout would judge the stall, not the models.
            upstream_options={"connect_timeout": "30s"},
        )
        async with embedded(config) as running:
            yield running


async def get(session: ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        body = await response.json()
        assert response.status == 200, body
        return body


def users(running: Embedded, **settings: Any) -> SimulationPlan:
    """Simulated users of this stack's experiment."""
    return SimulationPlan(
        proxy=running.proxy_url,
        control=running.control_url,
        experiment="exp",
        path="/api/agent/a/decide",
        **settings,
    )


async def rollout(running: Embedded, scenario: str) -> str:
    """Start the rollout, simulate users until it ends; its final state."""
    async with (
        ClientSession() as session,
        session.post(f"{running.control_url}/api/rollouts/exp", json={}) as response,
    ):
        assert response.status == 201
    plan = users(
        running,
        rate=400,
        users=400,
        duration=120,
        until_rollout_ends=True,
        qualities=SCENARIOS[scenario],
        seed=7,
    )
    tally = await Simulation(plan).run()
    assert tally.refused_outcomes == 0
    # Every request has been answered; hand the data plane's last sums to the store (twice:
    # a flush the flusher had in flight leaves what came after it for the next) so that each
    # report below reads the same numbers rather than one flush apart.
    for _ in range(2):
        await running.plane.flush_measurements()
    return tally.rollout


async def test_after_a_completed_rollout_the_reports_read_the_stages_with_a_control_arm(
    session: ClientSession, tmp_path: Path
) -> None:
    async with stack(ml_latency_ms=1.0) as running:
        assert await rollout(running, "better") == "completed"
        api = running.control_url
        impact = await get(session, f"{api}/api/metrics/exp/business-impact")
        accuracy = impact["metrics"]["accuracy"]
        assert accuracy["n"]["control"] > 100  # it was the 100% phase's: one control sample
        assert 15 < accuracy["improvement_percentage"] < 40  # 0.88 against 0.70: +25.7%
        low, high = accuracy["interval"]  # in %, as the estimate it brackets
        assert low < accuracy["improvement_percentage"] < high
        final = await get(session, f"{api}/api/metrics/current/final-assessment")
        significance = await get(session, f"{api}/api/experiments/current/significance")
        comparison = await get(session, f"{api}/api/metrics/exp/comparison")
        test = await get(session, f"{api}/api/statistics/significance-test")
        args = argparse.Namespace(
            url=api, token=None, experiment="exp", output=str(tmp_path / "report.md")
        )
        markdown = (await asyncio.to_thread(report, args)).read_text()
    evidence = impact["evidence"]
    assert evidence["basis"] == "earlier phases with both arms"
    # the holdout (75%) is compared too; the 100% phase after its release is not
    assert [p["percentage"] for p in evidence["phases"]] == [25, 50, 75]
    assert impact["metric"] == "accuracy"
    assert 15 < impact["improvement_percentage"] < 40  # 0.88 against 0.70: +25.7%
    low, high = impact["interval"]
    assert low < impact["improvement_percentage"] < high
    assert final["rollout_state"] == "completed"
    assert final["accuracy_improvement"] == impact["improvement_percentage"]
    assert 4.2 < final["satisfaction_score"] < 4.8
    assert final["details"]["satisfaction_score"]["n"] == accuracy["n"]["treatment"]
    # The latency reduction, in %, as the comparison reads it (its sign is the machine's to
    # decide here: both agents share this test's event loop with the proxy).
    latency = comparison["metrics"]["latency"]["relative_improvement"]
    assert final["time_savings"] == pytest.approx(100 * latency)
    assert final["details"]["time_savings"]["metric"] == "latency"
    assert significance["metric"] == "accuracy"
    assert significance["p_value"] < 0.05
    assert 0 < significance["power"] <= 1
    assert significance["sample_size"] == accuracy["n"]["control"] + accuracy["n"]["treatment"]
    assert comparison["treatment_accuracy"] > comparison["control_accuracy"]
    assert comparison["metrics"]["accuracy"]["n"] == {
        "control": accuracy["n"]["control"],
        "treatment": accuracy["n"]["treatment"],
    }
    assert test["p_value"] == significance["p_value"]
    assert test["confidence_level"] == 1 - test["p_value"]
    assert test["cohorts"] == {"a": "control", "b": "treatment"}
    # The report's table and summary read the same percentages: the estimate inside.
    row = next(line for line in markdown.splitlines() if line.startswith("| accuracy |"))
    shown, bracket = row.split(" | ")[1:3]
    low, high = (float(v.rstrip("%")) for v in bracket.strip("[]").split(", "))
    assert low < float(shown.rstrip("%")) < high, row
    assert re.search(r"accuracy \+[\d.]+% \(always-valid interval \+[\d.]+% to \+[\d.]+%", markdown)


async def test_after_a_rollback_the_reports_read_the_stage_it_was_rolled_back_from(
    session: ClientSession,
) -> None:
    async with stack() as running:
        assert await rollout(running, "worse") == "rolled_back"
        impact = await get(session, f"{running.control_url}/api/metrics/exp/business-impact")
        # Users simulated afterwards (the demo's next shadow step) are in no rollout: the
        # one that ended before them is not theirs to report.
        after = users(running, rate=50, users=10, duration=0.2)
        assert (await Simulation(after).run()).rollout == ""
    accuracy = impact["metrics"]["accuracy"]
    assert accuracy["improvement_percentage"] < 0  # it was None ("-") after a rollback
    assert accuracy["significant"]
    assert [p["percentage"] for p in impact["evidence"]["phases"]] == [25]
    assert impact["improvement_percentage"] == accuracy["improvement_percentage"]
