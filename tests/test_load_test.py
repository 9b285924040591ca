"""The open-loop load test: against a real abgate, from Python, from the shell, and as a
rollout stage's gate."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from aiohttp import ClientSession

from abgate.control.load_test import LoadPlan, run_load
from abgate.control.serve import embedded
from scripts.demo_agent import Behaviour
from tests.servers import make_config
from tests.test_rollout import FAST, api, stack, traffic, until

ROOT = Path(__file__).parent.parent


async def test_a_fixed_rate_reaches_both_arms_and_measures_latency(agents: dict[str, str]) -> None:
    async with embedded(make_config(agents, percentage=50)) as running:
        result = await run_load(
            LoadPlan(
                running.proxy_url, requests_per_second=200, duration=1.5, users=500, p95_max=1.0
            )
        )
    summary = result.as_json()
    assert summary["sent"] == 300
    assert summary["answered"] == 300
    assert summary["failed_requests"] == 0
    assert set(summary["arms"]) == {"control", "treatment"}
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p95"]
    assert summary["passed"]


async def test_from_the_shell_it_sets_the_level_and_restores_it(agents: dict[str, str]) -> None:
    async with embedded(make_config(agents, percentage=10)) as running:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "scripts/load-test.sh",
            "--proxy",
            running.proxy_url,
            "--control",
            running.control_url,
            "--target-percentage",
            "100",
            "--duration",
            "1s",
            "--requests-per-second",
            "50",
            "--p95-max",
            "2s",
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "ABGATE": str(Path(sys.executable).parent / "abgate")},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err
        result = json.loads(out)
        assert running.flags.get("exp").percentage == 10  # restored
    assert result["target_percentage"] == 100
    assert result["arms"] == {"treatment": 50}


async def test_a_stage_waits_for_its_load_test_and_a_failed_one_escalates(
    session: ClientSession,
) -> None:
    test = {"requests_per_second": 50, "duration": "1s", "p95_max": "2s"}
    plan = {**FAST, "stages": [{"percentage": 50, "load_test": test}, 100]}
    async with stack(plan) as running, traffic(session, running):
        await api(session, running, "POST", "/api/rollouts/exp", {}, expect=201)
        done = await until(session, running, lambda v: v["state"] == "completed")
        history = (await api(session, running, "GET", "/api/rollouts/exp/history"))["history"]
    assert done["stage"]["percentage"] == 100
    [passed] = [e for e in history if e["change"] == "load test passed"]
    assert passed["inputs"]["sent"] == 50
    slow = Behaviour()
    slow.latency_ms = 30.0
    failing = {  # no latency guardrail: it would roll back first (a rollback beats all)
        **FAST,
        "guardrails": [{"metric": "error", "margin": 0.05}],
        "stages": [{"percentage": 50, "load_test": {**test, "p95_max": "5ms"}}, 100],
    }
    async with stack(failing, slow) as running:
        await api(session, running, "POST", "/api/rollouts/exp", {}, expect=201)
        view = await until(session, running, lambda v: v["state"] == "escalated")
    assert view["reason"].startswith("load test at 50% failed")
    assert view["stage"]["percentage"] == 50


async def test_the_suite_runs_every_level_and_writes_its_table(
    agents: dict[str, str], tmp_path: Path
) -> None:
    report = tmp_path / "suite.md"
    async with embedded(make_config(agents, percentage=10)) as running:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "scripts/load-testing/ml-infrastructure-suite/run.sh",
            "--duration",
            "1s",
            "--requests-per-second",
            "20",
            "--p95-max",
            "2s",
            "--output",
            str(report),
            "--",
            "--proxy",
            running.proxy_url,
            "--control",
            running.control_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "ABGATE": str(Path(sys.executable).parent / "abgate")},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, out.decode()
        assert running.flags.get("exp").percentage == 10
    rows = [
        line for line in report.read_text().splitlines() if line.startswith("| ") and "%" in line
    ]
    assert [row.split("|")[1].strip() for row in rows] == ["0%", "25%", "50%", "75%", "100%"]
    assert all("| passed |" in row for row in rows)
    assert "treatment" not in rows[0]  # at 0% the control arm takes everything
