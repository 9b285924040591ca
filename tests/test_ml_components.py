"""The ML side at a glance: /health/aggregate lists each ML component with its status, and
the shadow statistics carry their totals over every experiment at the top."""

from __future__ import annotations

from aiohttp import ClientSession

from tests.servers import until
from tests.test_health import aggregate, force
from tests.test_shadow import URL, shadowed


async def test_ml_components_and_shadow_totals(session: ClientSession) -> None:
    async with shadowed() as (running, _):
        for user in range(10):
            async with session.post(
                f"{running.proxy_url}{URL}", data=b"{}", headers={"X-User-Id": f"u{user}"}
            ) as response:
                await response.read()
        shadow = running.plane.shadows["exp"]
        await until(lambda: shadow.total == 10)
        async with session.get(f"{running.control_url}/api/shadow/stats") as response:
            stats = await response.json()
        status, body = await aggregate(session, running)
        assert (status, body["overall_health"]) == (200, "healthy")
        components = {c["name"]: c for c in body["ml_components"]}
        assert set(components) == {
            "treatment",
            "treatment breaker",
            "exp shadow",
            "statistics worker",
            "rollout controller",
        }
        assert {c["kind"] for c in body["ml_components"]} == {
            "ml_upstream",
            "breaker",
            "shadow",
            "statistics_worker",
            "rollout_controller",
        }
        assert all(c["status"] == "healthy" for c in body["ml_components"])
        assert components["exp shadow"]["total_decisions"] == 10
        await force(session, running, "treatment", "forced_open")
        # With its treatment's breaker open, every copy is dropped: the shadow compares
        # nothing, and says so once 20 in a row were dropped.
        for user in range(20):
            async with session.post(
                f"{running.proxy_url}{URL}", data=b"{}", headers={"X-User-Id": f"v{user}"}
            ) as response:
                await response.read()
        _, body = await aggregate(session, running)
        components = {c["name"]: c for c in body["ml_components"]}
        assert components["exp shadow"]["status"] == "degraded"
        assert components["exp shadow"]["reasons"] == [
            "the last 20 copies were dropped, none sent: the shadow compares nothing (see dropped)"
        ]
        assert components["treatment breaker"] == {
            "name": "treatment breaker",
            "kind": "breaker",
            "status": "unhealthy",
            "state": "forced_open",
        }
    assert stats["total_decisions"] == 10
    assert (stats["agreements"], stats["disagreements"], stats["errors"]) == (5, 5, 0)
    assert stats["agreement_rate"] == 0.5
    assert stats["experiments"][0]["total_decisions"] == 10
