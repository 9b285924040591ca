"""Rollouts driven from the shell against a real `abgate run` process: the automation script
follows a rollout to the end, SIGKILL mid-stage resumes the same stage on the same clock, and
the report is written."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from abgate.state.rollouts import Rollout
from abgate.state.state_file import StateFile
from scripts.demo_agent import create_app
from tests.processes import Process, abgate, write_config
from tests.servers import serve_app

ROOT = Path(__file__).parent.parent
URL = "/api/agent/credit/decide"
PLAN = {
    "stages": [25, 50, 100],
    "min_duration": "1s",
    "tick": "100ms",
    "bake": "300ms",
    "guardrails": [{"metric": "error", "margin": 0.05}, {"metric": "latency", "margin": "200%"}],
}


def document(control: str, treatment: str, state: Path) -> dict[str, Any]:
    return {
        "proxy": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
        "control": {"listen": "127.0.0.1:0"},
        "flags": {"state_file": str(state)},
        "upstreams": {"deterministic": {"url": control}, "ml": {"url": treatment}},
        "routes": [{"prefix": "/api/agent/", "experiment": "exp"}],
        "experiments": {
            "exp": {
                "control": "deterministic",
                "treatment": "ml",
                "percentage": 0,
                "sticky": [{"header": "X-User-Id"}],
                "metrics": {"accuracy": {"type": "binary", "direction": "higher"}},
                "rollout": PLAN,
            }
        },
    }


@contextlib.asynccontextmanager
async def load(session: ClientSession, proxy: str) -> AsyncIterator[None]:
    """Requests from distinct users until the block ends (bounded: 30,000 at most)."""
    stop = asyncio.Event()

    async def client(worker: int) -> None:
        for i in range(7_500):
            if stop.is_set():
                return
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                async with session.post(
                    proxy + URL, data=b"{}", headers={"X-User-Id": f"u{worker}-{i}"}
                ) as response:
                    await response.read()

    tasks = [asyncio.create_task(client(w)) for w in range(4)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def cli(api: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
        env={
            **os.environ,
            "ABGATE_CONTROL_URL": api,
            "ABGATE": str(Path(sys.executable).parent / "abgate"),
        },
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, output.decode()


async def view(session: ClientSession, api: str) -> dict[str, Any]:
    async with session.get(f"{api}/api/rollouts/exp") as response:
        data: dict[str, Any] = await response.json()
        return data


async def test_the_script_follows_a_rollout_killed_and_restarted_mid_stage(
    session: ClientSession, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    async with (
        serve_app(create_app("deterministic")) as control,
        serve_app(create_app("ml", seed=1)) as treatment,
    ):
        config = write_config(tmp_path / "abgate.yaml", document(control, treatment, state))
        run = ("run", "--config", str(config))
        expect = {"proxy": 1, "control API": 1}
        async with abgate(*run, expect=expect) as first:
            api = first.url("control API")
            code, output = await cli(
                api,
                sys.executable,
                "-m",
                "abgate.control.cli",
                "rollout",
                "start",
                "exp",
                "--reason",
                "from the test",
            )
            assert code == 0, output
            # Just started: no decision yet, and said so (not "-: ").
            assert "  decision: none yet" in output
            assert "eta: not known yet" in output  # no samples yet to extrapolate from
            async with load(session, first.url("proxy")), asyncio.timeout(120):
                while (before := await view(session, api))["stage"]["index"] < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            os.kill(first.pid, signal.SIGKILL)  # mid-stage, no goodbye
            await first.wait()
        # What the killed process had written last: the stage may have moved on between the
        # look above and the kill (the load runs on), so the file, not the look, is the truth.
        saved = Rollout.from_json(StateFile(state).section("rollouts")["current"]["exp"])
        assert saved.stage_index >= before["stage"]["index"] >= 1
        async with abgate(*run, expect=expect) as second:
            api = second.url("control API")
            after = await view(session, api)
            # Same stage, same clock.
            assert after["stage"]["index"] == saved.stage_index
            assert after["stage"]["started_at"] == saved.stage_started_at
            async with load(session, second.url("proxy")):
                code, output = await cli(
                    api, "bash", "scripts/rollout/staged-rollout-automation.sh", "exp"
                )
            assert code == 0, output
            assert "rollout of exp completed" in output
            # Run again once it has finished: it reports the completed rollout, and does not
            # take the treatment back to the first stage with a new one.
            finished = await view(session, api)
            code, output = await cli(
                api, "bash", "scripts/rollout/staged-rollout-automation.sh", "exp"
            )
            assert code == 0, output
            assert "rollout of exp completed" in output
            again = await view(session, api)
            assert again["state"] == "completed"
            code, output = await cli(
                api, sys.executable, "-m", "abgate.control.cli", "rollout", "status", "exp"
            )
            assert code == 0, output
            assert "exp: completed" in output
            assert "  eta:" not in output  # over: nothing left to estimate
            assert again["started_at"] == finished["started_at"]
            report = tmp_path / "report.md"
            code, output = await cli(
                api,
                sys.executable,
                "-m",
                "abgate.control.cli",
                "rollout",
                "report",
                "exp",
                "--output",
                str(report),
            )
            assert code == 0, output
            code, history = await cli(
                api,
                sys.executable,
                "-m",
                "abgate.control.cli",
                "rollout",
                "history",
                "exp",
                "--limit",
                "1000",
            )
            await _stop(second)
    text = report.read_text()
    assert "# Business impact: exp" in text
    assert "stage 2: 100%" in text
    changes = [
        line.split("\t")[2]
        for line in history.splitlines()
        if line.split("\t")[2].startswith("stage ")
    ]
    # The restarted process started one more stage (the "start" line is "stage 0"), no stage
    # twice: 25 (start) -> 50 (first process) -> 100 (second process).
    assert sorted(changes) == ["stage 0: 25%", "stage 1: 50%", "stage 2: 100%"]


async def _stop(process: Process) -> None:
    assert await process.stop() == 0


def test_an_eta_is_kept_only_while_running_and_status_says_so() -> None:
    """A paused or escalated rollout waits on a person: the eta its last tick estimated is
    dropped, not shown as a promise (trial)."""
    from abgate.control.rollout_cli import render

    running = Rollout("exp", "running", 0, 0.0, 1, 0.0, "alice", eta_seconds=90.0)
    assert running.next(reason="still going").eta_seconds == 90.0
    shown = {**running.as_json(), "stage": {"index": 0}, "stages": [25, 100], "gates": []}
    assert "  eta: 1 min 30 s" in render(shown)  # as the gates' reasons write a duration
    for state in ("paused", "escalated", "awaiting_approval"):
        held = running.next(state=state)
        assert held.eta_seconds is None, state
        view = {
            **held.as_json(),
            "stage": {"index": 0, "percentage": 25},
            "stages": [25, 50, 100],
            "gates": [],
        }
        lines = render(view)
        assert f"  eta: none while {state.replace('_', ' ')}" in lines, lines
