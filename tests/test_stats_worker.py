"""The statistics worker on the states a real rollout passes through: an arm with no samples
(0%, 100%, the first request), one evaluation that fails, outcomes reported after a change."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import ClientSession

from abgate.control import stats_worker
from abgate.control.offload import IN_THREAD
from abgate.control.serve import Embedded, embedded
from tests.servers import make_config

URL = "/api/agent/credit/decide"
STATS_ENDPOINTS = (
    "/api/experiments",
    "/api/experiments/exp",
    "/api/experiments/exp/significance",
    "/api/metrics/exp/comparison",
    "/api/experiments/current",
)


async def get(session: ClientSession, url: str) -> tuple[int, str, Any]:
    async with session.get(url) as response:
        return response.status, response.content_type, await response.json()


async def decide(session: ClientSession, running: Embedded, user: str) -> dict[str, str]:
    async with session.post(
        f"{running.proxy_url}{URL}", data=b"{}", headers={"X-User-Id": user}
    ) as response:
        assert response.status == 200
        return dict(response.headers)


@pytest.mark.parametrize(("percentage", "requests"), [(0, 20), (100, 20), (10, 1)])
async def test_an_arm_without_samples_is_not_enough_data(
    session: ClientSession, agents: dict[str, str], percentage: float, requests: int
) -> None:
    async with embedded(make_config(agents, percentage=percentage)) as running:
        for user in range(requests):
            await decide(session, running, f"u{user}")
        await running.plane.flush_measurements()
        await running.worker.evaluate_all()
        for path in STATS_ENDPOINTS:
            status, content_type, body = await get(session, f"{running.control_url}{path}")
            assert (status, content_type) == (200, "application/json"), (path, body)
        _, _, significance = await get(
            session, f"{running.control_url}/api/experiments/exp/significance"
        )
        for metric in ("error", "latency"):
            assert significance["metrics"][metric]["status"].startswith("not enough data"), (
                significance["metrics"][metric]
            )
        _, _, health = await get(session, f"{running.control_url}/health/aggregate")
        assert health["components"]["statistics_worker"]["status"] == "healthy"
        assert running.worker.evaluation_errors == {}


async def test_worker_survives_a_failing_evaluation(
    session: ClientSession,
    agents: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real = stats_worker.evaluate
    broken = {"on": True}

    def evaluate(experiment: Any, *args: Any) -> Any:
        if broken["on"]:
            raise ZeroDivisionError("injected")
        return real(experiment, *args)

    monkeypatch.setattr(stats_worker, "evaluate", evaluate)
    async with embedded(make_config(agents, percentage=50)) as running:
        worker = running.worker
        worker.offload = IN_THREAD  # the patched evaluate is this process's alone
        for user in range(40):
            await decide(session, running, f"u{user}")
        await running.plane.flush_measurements()
        before = worker.evaluation_errors.get("exp", 0)  # the loop's own first tick, maybe
        for _ in range(3):
            await worker.evaluate_all()  # the loop's own step; it returns, it does not raise
        assert worker.evaluation_errors["exp"] >= before + 3
        failures = worker.evaluation_errors["exp"]
        assert (
            sum(
                "evaluating exp failed: ZeroDivisionError: injected" in r.message
                for r in caplog.records
            )
            == 1
        )  # logged once, counted every time
        status, _, health = await get(session, f"{running.control_url}/health/aggregate")
        component = health["components"]["statistics_worker"]
        assert component["status"] == "degraded"
        assert component["reasons"] == ["evaluating exp failed: ZeroDivisionError: injected"]
        async with session.get(f"{running.control_url}/metrics") as response:
            text = await response.text()
        assert f'abgate_stats_evaluation_errors_total{{experiment="exp"}} {failures:.1f}' in text

        broken["on"] = False  # the next tick recovers on its own
        await worker.evaluate_all()
        _, _, health = await get(session, f"{running.control_url}/health/aggregate")
        assert health["components"]["statistics_worker"]["status"] == "healthy"
        status, _, body = await get(session, f"{running.control_url}/api/experiments/exp")
        assert status == 200
        assert sum(body["current_phase"]["samples"].values()) == 40


async def test_outcomes_land_in_the_phase_of_their_decision(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents, percentage=50)) as running:
        api = running.control_url
        decisions = [await decide(session, running, f"u{user}") for user in range(20)]
        old_phase = int(decisions[0]["X-ABGate-Phase"])
        assert {d["X-ABGate-Phase"] for d in decisions} == {str(old_phase)}
        async with session.post(f"{api}/api/flags/exp", json={"percentage": 75}) as response:
            new_phase = (await response.json())["version"]
        assert new_phase != old_phase
        assert (await decide(session, running, "u1"))["X-ABGate-Phase"] == str(new_phase)

        # Reported after the change, with the phase the decision came back with.
        outcomes = [
            {
                "experiment": "exp",
                "arm": d["X-ABGate-Arm"],
                "metric": "satisfaction",
                "value": 4.0,
                "phase": int(d["X-ABGate-Phase"]),
                "user": f"u{user}",
            }
            for user, d in enumerate(decisions)
        ]
        async with session.post(f"{api}/api/outcomes", json=outcomes) as response:
            assert (await response.json()) == {"accepted": 20}
        _, sums = await running.worker.store.read("exp")
        landed: dict[int, int] = {}
        for key, value in sums.items():
            if key[3] == "satisfaction":
                landed[key[1]] = landed.get(key[1], 0) + value.count
        assert landed == {old_phase: 20}

        bad = [{**outcomes[0], "phase": 999}]
        async with session.post(f"{api}/api/outcomes", json=bad) as response:
            assert response.status == 400
            assert (await response.json())[
                "error"
            ] == f"[0].phase: exp has no phase 999 (phases are 1 to {new_phase})"


async def test_fallbacks_stay_in_their_assigned_arm_so_no_srm(
    session: ClientSession, agents: dict[str, str]
) -> None:
    """Intention to treat: with the ML breaker forced open every treatment request is answered
    by control, yet counted in treatment, so the arms stay balanced."""
    async with embedded(make_config(agents, percentage=50)) as running:
        async with session.post(
            f"{running.control_url}/api/breakers/treatment", json={"state": "forced_open"}
        ) as response:
            assert response.status == 200
        headers = [await decide(session, running, f"u{user}") for user in range(400)]
        assigned = {h["X-ABGate-Arm"] for h in headers}
        assert assigned == {"control", "treatment"}
        assert {h["X-ABGate-Served-By"] for h in headers} == {"control"}
        await running.plane.flush_measurements()
        await running.worker.evaluate_all()
        _, _, body = await get(session, f"{running.control_url}/api/experiments/exp")
    samples = body["current_phase"]["samples"]
    treated = sum(h["X-ABGate-Arm"] == "treatment" for h in headers)
    assert samples == {"control": 400 - treated, "treatment": treated}
    assert body["current_phase"]["srm_flagged"] is False


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_write_that_keeps_the_percentage_keeps_the_phase(
    session: ClientSession, agents: dict[str, str], tmp_path: Any, backend: str
) -> None:
    from contextlib import AsyncExitStack

    from tests.redis_server import redis_server

    async with AsyncExitStack() as stack:
        flags: dict[str, Any] = {"state_file": str(tmp_path / "state.json")}
        if backend == "redis":
            redis = await stack.enter_async_context(redis_server(tmp_path))
            flags["redis_url"] = redis.url
        config = make_config(agents, percentage=25, flags=flags)
        async with embedded(config) as running:
            api = running.control_url
            phases = []
            for percentage in (25, 25, 50, 50):
                async with session.post(
                    f"{api}/api/flags/exp", json={"percentage": percentage}
                ) as response:
                    body = await response.json()
                phases.append((body["version"], body["phase"]))
            assert phases == [(2, 1), (3, 1), (4, 4), (5, 4)]
            await until_flag(running, 5)
            assert (await decide(session, running, "u1"))["X-ABGate-Phase"] == "4"
        async with embedded(config) as restarted:  # same phase after a restart
            assert (await decide(session, restarted, "u1"))["X-ABGate-Phase"] == "4"


async def until_flag(running: Embedded, version: int) -> None:
    from tests.servers import tables_reach

    await tables_reach([running.flags], "exp", version)


def test_significant_follows_the_holm_adjusted_p_value() -> None:
    """Two success metrics with raw sequential p-values on both sides of alpha/2: the one
    that passes alone must not pass once adjusted for the other."""
    from abgate.control.stats_worker import evaluate
    from abgate.state.measurements import Phase, Sums

    config = make_config(
        {"control": "http://127.0.0.1:1", "treatment": "http://127.0.0.1:2"},
        experiment={
            "metrics": {
                "a": {"type": "continuous", "direction": "higher"},
                "b": {"type": "continuous", "direction": "higher"},
            }
        },
    )
    n = 2000

    def sums(mean: float) -> Sums:
        return Sums(n, mean * n, (mean * mean + 1.0) * n)  # variance about 1 around `mean`

    data = {
        ("exp", 1, arm, metric, -1): sums(mean)
        for arm, metric, mean in (
            ("control", "a", 0.0),
            ("treatment", "a", 0.1),
            ("control", "b", 0.0),
            ("treatment", "b", 0.08),
        )
    }
    report = evaluate(config.experiments["exp"], [Phase(1, 1000, 0.0)], data)
    raw: dict[str, float] = {}
    adjusted: dict[str, float] = {}
    for metric in ("a", "b"):
        result = report.metrics[metric]
        assert result.sequential is not None
        assert result.p_value_holm is not None
        raw[metric], adjusted[metric] = result.sequential.p_value, result.p_value_holm
    assert min(raw.values()) < 0.05 < max(adjusted.values())  # the case that matters
    for metric in ("a", "b"):
        result = report.metrics[metric]
        assert result.significant is (adjusted[metric] < 0.05)
        assert result.as_json()["sequential"]["significant"] is result.significant


def test_across_phases_is_stratified_never_pooled() -> None:
    """Simpson's paradox from a ramp: the treatment is better in each phase, but its traffic
    sits mostly in the later phase with the lower base rate, so pooling reverses the sign."""
    from abgate.control.stats_worker import evaluate
    from abgate.state.measurements import Phase, Sums

    def rate(n: int, successes: int) -> Sums:
        return Sums(n, float(successes), float(successes))

    config = make_config({"control": "http://127.0.0.1:1", "treatment": "http://127.0.0.1:2"})
    data = {
        ("exp", 1, "control", "accuracy", -1): rate(9000, 900),  # 10%  at a 10% split
        ("exp", 1, "treatment", "accuracy", -1): rate(1000, 110),  # 11%
        ("exp", 4, "control", "accuracy", -1): rate(5000, 250),  # 5%   at 50%
        ("exp", 4, "treatment", "accuracy", -1): rate(5000, 275),
    }  # 5.5%
    report = evaluate(config.experiments["exp"], [Phase(1, 1000, 0.0), Phase(4, 5000, 1.0)], data)
    pooled = 385 / 6000 - 1150 / 14000
    assert pooled < -0.015  # what pooling would claim: 1.8 points worse
    combined = report.across_phases["accuracy"]
    assert combined.phases == 2
    assert 0.005 < combined.effect < 0.01  # between the two phases' +1.0 and +0.5 points


def test_values_at_the_largest_measurable_magnitude_still_get_a_report() -> None:
    """A trial posted outcomes near 1e100 (then accepted): the report's tests overflowed and
    the experiment's report froze. Values up to MAX_VALUE, per user, are compared."""
    from abgate.control.stats_worker import evaluate
    from abgate.state.measurements import MAX_VALUE, Phase, Sums

    config = make_config(
        {"control": "http://127.0.0.1:1", "treatment": "http://127.0.0.1:2"},
        experiment={"metrics": {"revenue": {"type": "continuous", "direction": "higher"}}},
    )
    data = {}
    for cluster in range(128):
        for arm, scale in (("control", 1.0), ("treatment", 0.9)):
            values = [MAX_VALUE * scale * (1 - 0.01 * (i % 7)) for i in range(50)]
            total = sum(values)
            data[("exp", 1, arm, "revenue", cluster)] = Sums(50, total, sum(v * v for v in values))
    report = evaluate(config.experiments["exp"], [Phase(1, 5000, 0.0)], data)
    result = report.metrics["revenue"]
    assert result.status == "ok", result.status
    assert result.sequential is not None
    assert result.sequential.p_value < 0.05  # 10% lower, on 6,400 values an arm
