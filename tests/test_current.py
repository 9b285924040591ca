"""`current` and groups: where a call takes an experiment and none is named, the one whose
rollout is under way, else control.default_experiment, else the only one; a group of
experiments rolls back as one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import yaml
from aiohttp import ClientSession

from abgate.config import parse_config
from abgate.control.serve import Embedded, embedded
from tests.servers import TEST_METRICS


def two_experiments(agents: dict[str, str], **control: Any) -> Any:
    experiment = {
        "control": "control",
        "treatment": "treatment",
        "sticky": [{"header": "X-User-Id"}],
        "metrics": TEST_METRICS,
        "rollout": {"stages": [25, 100], "min_duration": "1h"},
    }
    document = {
        "proxy": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
        "control": {"listen": "127.0.0.1:0", **control},
        "flags": {"state_file": None},
        "upstreams": {name: {"url": url} for name, url in agents.items()},
        "routes": [
            {"prefix": "/b/", "experiment": "beta"},
            {"prefix": "/", "experiment": "alpha"},
        ],
        "experiments": {
            "alpha": {**experiment, "percentage": 10},
            "beta": {**experiment, "percentage": 20},
        },
    }
    return parse_config(yaml.safe_dump(document, sort_keys=False), "<test>")


@contextlib.asynccontextmanager
async def running(agents: dict[str, str], **control: Any) -> AsyncIterator[Embedded]:
    async with embedded(two_experiments(agents, **control)) as stack:
        yield stack


async def call(session: ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with session.request(method, url, json=body) as response:
        return response.status, await response.json()


async def test_an_ambiguous_current_names_the_choices(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with running(agents) as stack:
        for path in (
            "/api/experiments/current",
            "/api/metrics/current/business-impact",
            "/api/rollouts/current",
        ):
            status, body = await call(session, "GET", stack.control_url + path)
            assert status == 400, path
            assert body["error"] == (
                "'current' is ambiguous: no rollout is under way, no "
                "control.default_experiment, and there are 2 experiments: alpha, beta; name one"
            )
        status, body = await call(
            session,
            "POST",
            stack.control_url + "/api/rollout/decision",
            {"current_percentage": 25, "target_percentage": 100},
        )
        assert (status, body["error"].startswith("'current' is ambiguous")) == (400, True)


async def test_current_is_the_default_then_the_rollout_under_way(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with running(agents, default_experiment="beta") as stack:
        api = stack.control_url
        status, body = await call(session, "GET", f"{api}/api/experiments/current")
        assert (status, body["name"]) == (200, "beta")
        assert body["routes"] == [
            {"name": "route-0", "prefix": "/b/", "regex": None, "methods": None}
        ]
        assert {m["name"] for m in body["metrics"] if m["outcome"]} == {"accuracy", "satisfaction"}
        status, body = await call(session, "POST", f"{api}/api/rollouts/alpha", {})
        assert status == 201
        for path in ("/api/experiments/current", "/api/rollouts/current"):
            status, body = await call(session, "GET", api + path)
            assert status == 200
            assert body.get("name", body.get("experiment")) == "alpha"  # under way wins
        status, body = await call(
            session,
            "POST",
            f"{api}/api/rollout/decision",
            {"current_percentage": 25, "target_percentage": 100},
        )
        assert (status, body["decision"]) == (200, "hold")
        assert "insufficient" in body["reason"]
        # The command line takes `current` when no experiment is named.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "abgate.control.cli",
            "rollout",
            "--url",
            api,
            "status",
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ},
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        assert out.decode().startswith("alpha: running")
        status, body = await call(session, "GET", f"{api}/api/experiments/nope")
        assert (status, body["error"]) == (404, 'unknown experiment "nope"')


async def test_a_group_rolls_back_as_one(session: ClientSession, agents: dict[str, str]) -> None:
    async with running(agents, groups={"ml-agents": ["alpha", "beta"]}) as stack:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "scripts/emergency-rollback.sh",
            "ml-agents",
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "ABGATE_CONTROL_URL": stack.control_url},
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out
        assert out.decode().startswith("rollback of alpha=v2, beta=v2: converged")
        assert stack.flags.get("alpha").percentage == stack.flags.get("beta").percentage == 0
        status, body = await call(
            session, "POST", f"{stack.control_url}/api/rollback", {"experiments": ["nope"]}
        )
        assert (status, body) == (404, {"error": 'unknown flag "nope"'})


async def test_outcomes_take_the_phase_as_the_header_gave_it(
    session: ClientSession, agents: dict[str, str]
) -> None:
    """`"phase": "2"` was refused ("expected the X-ABGate-Phase header's whole number")."""
    async with running(agents) as stack:
        url = f"{stack.control_url}/api/outcomes"
        item = {
            "experiment": "alpha",
            "arm": "treatment",
            "metric": "accuracy",
            "value": 1,
            "user": "u1",
        }
        status, body = await call(session, "POST", url, [{**item, "phase": "1"}])
        assert (status, body) == (200, {"accepted": 1})
        for phase, error in (("x1", "expected the X-ABGate-Phase"), ("7", "has no phase 7")):
            status, body = await call(session, "POST", url, [{**item, "phase": phase}])
            assert status == 400
            assert error in body["error"]
