"""Shadow mode on real servers: copies go to the treatment upstream, answers are compared,
the client never waits for the copy, limits drop copies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import perf_counter
from typing import Any

from aiohttp import ClientSession, web

from abgate.control.serve import Embedded, embedded
from abgate.proxy.breaker import BreakerState
from tests.servers import make_config, serve_app, until

URL = "/api/agent/credit/decide"
SEEN = web.AppKey("seen", list)
RELEASE = web.AppKey("release", asyncio.Event)


def agent(kind: str) -> web.Application:
    """control: always approves. treatment: approves even users, rejects odd ones, and can be
    held (RELEASE) to look hung."""
    app = web.Application()
    app[SEEN] = []
    app[RELEASE] = asyncio.Event()
    app[RELEASE].set()

    async def decide(request: web.Request) -> web.Response:
        await request.read()
        app[SEEN].append(dict(request.headers))
        await app[RELEASE].wait()
        user = int(request.headers.get("X-User-Id", "u0")[1:])
        decision = "approve" if kind == "control" or user % 2 == 0 else "reject"
        return web.json_response({"decision": decision, "source": kind})

    app.router.add_route("*", URL, decide)
    return app


@asynccontextmanager
async def shadowed(
    upstream_options: dict[str, Any] | None = None, **shadow: Any
) -> AsyncIterator[tuple[Embedded, web.Application]]:
    treatment_app = agent("treatment")
    async with serve_app(agent("control")) as control, serve_app(treatment_app) as treatment:
        config = make_config(
            {"control": control, "treatment": treatment},
            percentage=0,
            experiment={"shadow": {"percentage": 100, "compare": ["$.decision"], **shadow}},
            upstream_options=upstream_options,
        )
        async with embedded(config) as running:
            yield running, treatment_app


async def stats(session: ClientSession, running: Embedded) -> dict[str, Any]:
    async with session.get(f"{running.control_url}/api/shadow/stats") as response:
        return (await response.json())["experiments"][0]  # type: ignore[no-any-return]


async def test_agreement_is_counted(session: ClientSession) -> None:
    async with shadowed() as (running, treatment):
        for user in range(40):
            async with session.post(
                f"{running.proxy_url}{URL}", data=b"{}", headers={"X-User-Id": f"u{user}"}
            ) as response:
                assert (await response.json())["source"] == "control"
        shadow = running.plane.shadows["exp"]
        await until(lambda: shadow.total == 40)  # copies finish in the background
        result = await stats(session, running)
        async with session.get(f"{running.control_url}/metrics") as response:
            metrics = await response.text()
    assert result["total_decisions"] == 40
    assert result["agreements"] == 20
    assert result["disagreements"] == 20
    assert result["agreement_rate"] == 0.5
    assert result["errors"] == 0
    sample = result["recent_disagreements"][-1]["differences"]
    assert sample == {"$.decision": {"control": "approve", "treatment": "reject"}}
    assert all(headers.get("X-ABGate-Shadow") == "1" for headers in treatment[SEEN])
    assert 'abgate_shadow_comparisons_total{experiment="exp",result="disagree"} 20.0' in metrics


async def test_client_does_not_wait_for_the_copy(session: ClientSession) -> None:
    async with shadowed(max_in_flight=2) as (running, treatment):
        treatment[RELEASE].clear()  # the treatment upstream hangs
        for user in range(5):
            async with session.post(
                f"{running.proxy_url}{URL}", data=b"{}", headers={"X-User-Id": f"u{user}"}
            ) as response:
                assert response.status == 200  # answered while the copies hang
        result = await stats(session, running)
        assert result["total_decisions"] == 0
        assert result["in_flight"] == 2
        assert result["dropped"]["max_in_flight"] == 3
        treatment[RELEASE].set()
        shadow = running.plane.shadows["exp"]
        await until(lambda: shadow.total == 2)


async def test_copies_dropped_while_the_breaker_is_open(session: ClientSession) -> None:
    async with shadowed() as (running, _):
        async with session.post(
            f"{running.control_url}/api/breakers/treatment", json={"state": "forced_open"}
        ) as response:
            assert response.status == 200
        for user in range(3):
            async with session.post(
                f"{running.proxy_url}{URL}", data=b"{}", headers={"X-User-Id": f"u{user}"}
            ) as response:
                assert response.status == 200
        result = await stats(session, running)
    assert result["dropped"]["breaker_open"] == 3
    assert result["total_decisions"] == 0


async def test_a_shadow_copy_is_the_half_open_trial_of_a_treatment_with_no_live_share(
    session: ClientSession,
) -> None:
    """At 0% (shadow only) no live call ever asks the treatment's breaker: once its wait is
    over, a copy is the trial, and a good answer closes it (copies were dropped for good)."""
    breaker_options = {"breaker": {"open_duration": "200ms", "half_open_calls": 1}}
    async with shadowed(upstream_options=breaker_options) as (running, _):
        breaker = running.plane.breakers["treatment"]
        for _ in range(breaker.config.consecutive_failures):  # an outage seen earlier
            breaker.record(perf_counter(), failed=True, slow=False)
        assert breaker.state is BreakerState.OPEN
        shadow = running.plane.shadows["exp"]

        async def send(user: int) -> None:
            headers = {"X-User-Id": f"u{user}"}
            async with session.post(
                f"{running.proxy_url}{URL}", data=b"{}", headers=headers
            ) as response:
                assert response.status == 200

        await send(0)  # within the wait: dropped
        assert shadow.dropped["breaker_open"] == 1
        await until(lambda: perf_counter() >= breaker.open_until)
        await send(2)  # the trial
        await until(lambda: shadow.total == 1)
        assert breaker.state is BreakerState.CLOSED
        for user in (4, 6):
            await send(user)
        await until(lambda: shadow.total == 3)
        result = await stats(session, running)
    assert result["dropped"]["breaker_open"] == 1
    assert result["agreements"] == 3
