"""Health: readiness, and the aggregate in each state (healthy, degraded, unhealthy)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from abgate.control.serve import Embedded, embedded
from tests.redis_server import redis_server
from tests.servers import make_config, refused_port, until


async def aggregate(session: ClientSession, running: Embedded) -> tuple[int, dict[str, Any]]:
    async with session.get(f"{running.control_url}/health/aggregate") as response:
        return response.status, await response.json()


async def force(session: ClientSession, running: Embedded, upstream: str, state: str) -> None:
    async with session.post(
        f"{running.control_url}/api/breakers/{upstream}", json={"state": state}
    ) as response:
        assert response.status == 200


async def test_aggregate_in_each_state(session: ClientSession, agents: dict[str, str]) -> None:
    async with embedded(make_config(agents)) as running:
        async with session.get(f"{running.control_url}/health/ready") as response:
            assert response.status == 200
        status, body = await aggregate(session, running)
        assert (status, body["overall_health"]) == (200, "healthy")
        upstreams = body["components"]["upstreams"]
        assert upstreams["control"]["critical"] is True
        assert upstreams["treatment"]["critical"] is False
        assert body["components"]["flag_store"] == {
            "status": "healthy",
            "backend": "memory",
            "reasons": [],
        }
        assert body["components"]["instances"]["instances"][0]["converged"] is True
        assert body["components"]["statistics_worker"]["status"] == "healthy"

        await force(session, running, "treatment", "forced_open")  # the ML arm is out
        status, body = await aggregate(session, running)
        assert (status, body["overall_health"]) == (200, "degraded")  # fallback covers it
        treatment = body["components"]["upstreams"]["treatment"]
        assert treatment["status"] == "unhealthy"
        assert treatment["reasons"] == ["breaker forced_open: forced through the control API"]

        await force(session, running, "control", "forced_open")  # users would see errors
        status, body = await aggregate(session, running)
        assert (status, body["overall_health"]) == (503, "unhealthy")


async def test_active_health_check(session: ClientSession, agents: dict[str, str]) -> None:
    with refused_port() as port:  # nothing listens on the treatment upstream
        upstreams = {**agents, "treatment": f"http://127.0.0.1:{port}"}
        config = make_config(
            upstreams,
            upstream_options={
                "health_check": {"path": "/health", "interval": "100ms", "timeout": "500ms"}
            },
        )
        async with embedded(config) as running:
            checks = running.plane.checks
            await until(lambda: all(c.last is not None for c in checks.values()))
            status, body = await aggregate(session, running)
    reports = body["components"]["upstreams"]
    assert reports["control"]["active_check"]["ok"] is True
    assert reports["treatment"]["status"] == "unhealthy"
    assert reports["treatment"]["reasons"][0].startswith("active check: connect failed")
    assert (status, body["overall_health"]) == (200, "degraded")


async def test_flag_store_outage_is_degraded(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    async with redis_server(tmp_path) as redis:
        config = make_config(agents, flags={"redis_url": redis.url, "heartbeat_interval": "200ms"})
        async with embedded(config) as running:
            sync = running.backend.sync
            assert sync is not None
            await until(lambda: sync.connected)
            async with session.get(f"{running.control_url}/health/ready") as response:
                assert response.status == 200
            await redis.kill()
            # The first error may be a write on the dying connection; then every retry's.
            await until(lambda: "connecting to 127.0.0.1" in (sync.last_error or ""))
            status, body = await aggregate(session, running)
    assert (status, body["overall_health"]) == (200, "degraded")
    store = body["components"]["flag_store"]
    assert store["status"] == "degraded"
    assert store["reasons"][0].startswith("Redis unreachable: Error ")  # the cause, named
    assert "connecting to 127.0.0.1" in store["reasons"][0]
    assert "routing with the last known flags" in store["reasons"][0]
    assert body["components"]["instances"]["status"] == "degraded"  # cannot list them now


async def test_both_arms_breakers_recover(session: ClientSession) -> None:
    """The control arm's breaker is never asked before a call (its calls have nowhere else
    to go); it must still close again once the upstream recovers, as the ML arm's does."""
    from scripts.demo_agent import Behaviour, create_app
    from tests.servers import serve_app

    control_behaviour, ml_behaviour = Behaviour(failure_rate=1.0), Behaviour(failure_rate=1.0)
    async with (
        serve_app(create_app("deterministic", control_behaviour)) as control,
        serve_app(create_app("ml", ml_behaviour, seed=3)) as treatment,
    ):
        config = make_config(
            {"control": control, "treatment": treatment},
            percentage=50,
            upstream_options={"breaker": {"open_duration": "100ms", "half_open_calls": 2}},
        )
        async with embedded(config) as running:

            async def send(users: range) -> None:
                for user in users:
                    async with session.post(
                        f"{running.proxy_url}/api/agent/x/decide",
                        data=b"{}",
                        headers={"X-User-Id": f"u{user}"},
                    ) as response:
                        await response.read()

            await send(range(40))
            breakers = running.plane.breakers
            assert breakers["control"].state.label == "open"
            assert breakers["treatment"].state.label == "open"
            status, body = await aggregate(session, running)
            assert (status, body["overall_health"]) == (503, "unhealthy")

            control_behaviour.failure_rate = ml_behaviour.failure_rate = 0.0
            users = iter(range(40, 10_000))  # bounded: recovery needs a few dozen calls

            async def recovered() -> bool:
                await send(range(next(users), next(users)))
                return all(b.state.label == "closed" for b in breakers.values())

            async with asyncio.timeout(60):
                while not await recovered():  # noqa: ASYNC110 - time itself is the event
                    await asyncio.sleep(0.05)  # let the 100 ms open wait run out
            status, body = await aggregate(session, running)
            assert status == 200  # no longer unhealthy; the window still holds the errors
            upstreams = body["components"]["upstreams"]
            assert {upstreams[name]["breaker"] for name in upstreams} == {"closed"}


async def test_a_first_evaluation_is_late_only_after_the_start_s_grace(
    aiohttp_client: Any,
) -> None:
    """A statistics worker that has not evaluated yet is healthy while it starts (its
    process forks, its first read runs) and degraded once a first evaluation is as late as
    a later one would be: `abgate run` is not degraded for its first second."""
    import time

    from aiohttp import web

    from abgate.control.health_api import aggregate as aggregate_handler
    from abgate.control.http import WORKER
    from abgate.control.stats_worker import StatsWorker
    from abgate.state.measurements import MemoryMeasurements

    worker = StatsWorker(
        make_config({"control": "http://a", "treatment": "http://b"}), MemoryMeasurements()
    )
    app = web.Application()
    app[WORKER] = worker
    app.router.add_get("/health/aggregate", aggregate_handler)
    client = await aiohttp_client(app)

    async def component() -> dict[str, Any]:
        async with client.get("/health/aggregate") as response:
            body: dict[str, Any] = await response.json()
        worker_health: dict[str, Any] = body["components"]["statistics_worker"]
        return worker_health

    assert (await component())["status"] == "healthy"  # just started
    worker.started_at = time.time() - (3 * worker.interval + 6)
    late = await component()
    assert late["status"] == "degraded"
    assert late["reasons"][0].startswith("no evaluation yet, "), late
    await worker.evaluate_all()
    assert (await component())["status"] == "healthy"
