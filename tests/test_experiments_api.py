"""Live statistics: the proxy measures every request, outcomes arrive in batches, the worker
compares the arms within the current phase; several proxies' flushes add up exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from abgate.control.serve import Embedded, embedded, worker
from scripts.demo_agent import Behaviour, create_app
from tests.redis_server import redis_server
from tests.servers import make_config, serve_app

URL = "/api/agent/credit/decide"


async def get(session: ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json()


async def traffic(session: ClientSession, base: str, users: range) -> dict[str, int]:
    arms: dict[str, int] = {}
    for user in users:
        async with session.post(
            f"{base}{URL}", data=b"{}", headers={"X-User-Id": f"u{user}"}
        ) as response:
            arm = response.headers["X-ABGate-Arm"]
            arms[arm] = arms.get(arm, 0) + 1
    return arms


async def flushed(running: Embedded) -> None:
    """Hand the data plane's pending sums to the store now (the flusher does it each second)."""
    await running.plane.flush_measurements()


async def test_measured_traffic_outcomes_and_significance(session: ClientSession) -> None:
    behaviour = Behaviour(failure_rate=0.3)
    async with (
        serve_app(create_app("deterministic")) as control,
        serve_app(create_app("ml", behaviour, seed=5)) as treatment,
    ):
        config = make_config(
            {"control": control, "treatment": treatment},
            percentage=50,
            experiment={"fallback_on_5xx": False},
        )
        async with embedded(config) as running:
            arms = await traffic(session, running.proxy_url, range(400))
            await flushed(running)
            api = running.control_url
            status, experiment = await get(session, f"{api}/api/experiments/current")
            assert status == 200
            phase = experiment["current_phase"]
            assert phase["percentage"] == 50
            assert phase["samples"] == {"control": arms["control"], "treatment": arms["treatment"]}
            assert 0 <= phase["srm_p_value"] <= 1

            # Outcomes: a bad item refuses the whole batch, naming its index.
            bad = [
                {
                    "experiment": "exp",
                    "arm": "control",
                    "metric": "accuracy",
                    "value": 1,
                    "user": "u",
                },
                {"experiment": "exp", "arm": "nope", "metric": "accuracy", "value": 1},
            ]
            async with session.post(f"{api}/api/outcomes", json=bad) as response:
                assert response.status == 400
                assert (await response.json())["error"].startswith("[1].arm: expected one of")
            outcomes = [
                {
                    "experiment": "exp",
                    "arm": arm,
                    "metric": "accuracy",
                    "value": (i % 10) < (9 if arm == "treatment" else 6),
                    "user": f"{arm}-{i}",
                }
                for arm in ("control", "treatment")
                for i in range(300)
            ]
            async with session.post(f"{api}/api/outcomes", json=outcomes) as response:
                assert (await response.json()) == {"accepted": 600}

            status, result = await get(session, f"{api}/api/experiments/exp/significance")
            assert status == 200
            metrics = result["metrics"]
            assert set(metrics) == {"accuracy", "error", "latency"}
            accuracy = metrics["accuracy"]
            assert accuracy["type"] == "binary"
            assert accuracy["n"] == {"a": 300, "b": 300}  # the bad batch left nothing behind
            assert accuracy["sequential"]["significant"] is True  # 60% vs 90%
            assert accuracy["fixed"]["effect"]["absolute"] == pytest.approx(0.3)
            error = metrics["error"]
            assert error["type"] == "binary"
            assert error["mean"]["a"] == 0  # the deterministic agent never fails
            assert error["mean"]["b"] > 0.15
            assert metrics["latency"]["type"] == "continuous"
            assert "p_value_holm" in accuracy["sequential"]

            async with session.post(
                f"{api}/api/statistics/significance-test",
                json={
                    "experiment": "exp",
                    "metric": "accuracy",
                    "cohort_a": "control",
                    "cohort_b": "treatment",
                },
            ) as response:
                live = await response.json()
            assert live["test"] == "sequential"  # the default for live data
            assert live["significant"] is True
            assert live["n"] == {"a": 300, "b": 300}
            status, comparison = await get(session, f"{api}/api/metrics/exp/comparison")
            assert comparison["metrics"]["accuracy"]["relative_improvement"] == pytest.approx(0.5)

            # A new percentage starts a new phase; the old one is reported separately.
            async with session.post(f"{api}/api/flags/exp", json={"percentage": 75}):
                pass
            await traffic(session, running.proxy_url, range(400, 440))
            await flushed(running)
            status, experiment = await get(session, f"{api}/api/experiments/exp")
            assert [p["percentage"] for p in experiment["phases"]] == [50, 75]
            assert sum(experiment["current_phase"]["samples"].values()) == 40
            async with session.get(f"{api}/metrics") as response:
                text = await response.text()
            assert 'abgate_stats_samples{arm="control",experiment="exp"}' in text


async def test_live_input_errors(session: ClientSession, agents: dict[str, str]) -> None:
    async with embedded(make_config(agents)) as running:
        status, body = await get(session, f"{running.control_url}/api/experiments/nope")
        assert (status, body) == (404, {"error": 'unknown experiment "nope"'})
        async with session.post(
            f"{running.control_url}/api/outcomes",
            json=[{"experiment": "exp", "arm": "control", "metric": "latency", "value": 1}],
        ) as r:
            assert (await r.json())["error"].startswith(
                "[0].metric: expected a metric declared under experiments.exp.metrics "
                "(declared: accuracy, satisfaction)"
            )
        async with session.post(
            f"{running.control_url}/api/outcomes",
            json=[{"experiment": "exp", "arm": "control", "metric": "undeclared", "value": 1}],
        ) as r:
            assert r.status == 400
            assert 'got "undeclared"' in (await r.json())["error"]
        async with session.post(
            f"{running.control_url}/api/outcomes",
            json=[{"experiment": "exp", "arm": "control", "metric": "accuracy", "value": 0.5}],
        ) as r:
            assert (await r.json())[
                "error"
            ] == "[0].value: accuracy is binary: expected 0, 1, true or false, got 0.5"
        async with session.post(
            f"{running.control_url}/api/outcomes",
            json=[{"experiment": "exp", "arm": "control", "metric": "satisfaction", "value": "x"}],
        ) as r:
            assert (await r.json())[
                "error"
            ] == '[0].value: expected a finite number or a boolean, got "x"'
        async with session.post(  # true for a continuous metric: a mistake, not 1.0
            f"{running.control_url}/api/outcomes",
            json=[{"experiment": "exp", "arm": "control", "metric": "satisfaction", "value": True}],
        ) as r:
            assert (await r.json())[
                "error"
            ] == "[0].value: satisfaction is continuous: expected a number, got true"
        async with session.post(f"{running.control_url}/api/outcomes", json={}) as r:
            assert r.status == 400
        # Users are the unit here (a sticky key): an outcome without its user is refused,
        # an explicit null (the decision carried no key) is its own unit.
        item = {"experiment": "exp", "arm": "control", "metric": "accuracy", "value": 1}
        async with session.post(f"{running.control_url}/api/outcomes", json=[item]) as r:
            assert r.status == 400
            assert (await r.json())["error"] == (
                "[0].user: required: exp assigns users by the header x-user-id, and users are "
                "the unit of its statistics; give the sticky key's value the decision "
                "carried, or null if the decision had none (the outcome then counts as its "
                "own unit)"
            )
        for user in ("u7", None):
            async with session.post(
                f"{running.control_url}/api/outcomes", json=[{**item, "user": user}]
            ) as r:
                assert r.status == 200, await r.text()


async def test_proxies_flushes_add_up_exactly(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    async with redis_server(tmp_path) as redis:
        config = make_config(
            agents, percentage=50, flags={"redis_url": redis.url, "heartbeat_interval": "200ms"}
        )
        async with embedded(config) as control, worker(config) as one, worker(config) as two:
            counted: dict[str, int] = {}
            users: dict[str, set[int]] = {}
            for base, some in (
                (control.proxy_url, range(100)),
                (one.proxy_url, range(100, 250)),
                (two.proxy_url, range(250, 300)),
                (two.proxy_url, range(50, 150)),  # users seen by two sidecars, and again
            ):
                for arm, count in (await traffic(session, base, some)).items():
                    counted[arm] = counted.get(arm, 0) + count
        # Leaving the context flushed every process's last sums; a fresh control plane reads.
        async with embedded(config) as reader:
            status, experiment = await get(session, f"{reader.control_url}/api/experiments/exp")
            for user in range(300):
                async with session.post(
                    f"{reader.proxy_url}{URL}", data=b"{}", headers={"X-User-Id": f"u{user}"}
                ) as response:
                    users.setdefault(response.headers["X-ABGate-Arm"], set()).add(user)
    assert status == 200
    assert experiment["current_phase"]["samples"] == counted
    # Distinct users, merged across sidecars (bitmaps OR-ed in Redis): each user once.
    assert sum(counted.values()) == 400
    assert experiment["current_phase"]["units"] == pytest.approx(
        {arm: len(seen) for arm, seen in users.items()}, abs=0.5
    )


async def test_extra_metrics_from_json_fields_and_headers(session: ClientSession) -> None:
    async with (
        serve_app(create_app("deterministic")) as control,
        serve_app(create_app("ml", seed=2)) as treatment,
    ):
        config = make_config(
            {"control": control, "treatment": treatment},
            percentage=50,
            experiment={
                "metrics": {
                    "confidence": {
                        "type": "continuous",
                        "direction": "higher",
                        "json": "$.confidence",
                    },
                    "length": {
                        "type": "continuous",
                        "direction": "lower",
                        "header": "Content-Length",
                    },
                }
            },
        )
        async with embedded(config) as running:
            arms = await traffic(session, running.proxy_url, range(200))
            await running.plane.flush_measurements()
            status, result = await get(
                session, f"{running.control_url}/api/experiments/exp/significance"
            )
    assert status == 200
    confidence = result["metrics"]["confidence"]
    assert confidence["n"] == {"a": arms["control"], "b": arms["treatment"]}
    assert confidence["mean"]["a"] == 1.0  # the deterministic agent is always sure
    assert 0.4 < confidence["mean"]["b"] < 1.0
    assert confidence["sequential"]["significant"] is True
    assert result["metrics"]["length"]["n"]["a"] == arms["control"]
