"""Breaker and fallback with real servers under a bounded, paced load (200 req/s for a few
seconds): the ML backend failing, killed, hung and recovering; clients see no errors on
replayable routes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import perf_counter
from typing import Any

import pytest
from aiohttp import ClientSession, web

from abgate.control.serve import Embedded, embedded
from abgate.proxy.breaker import BreakerState
from scripts.demo_agent import Behaviour, create_app
from tests.servers import free_port, make_config, serve_app, until

URL = "/api/agent/credit/decide"
FAST_BREAKER = {
    "open_duration": "300ms",
    "max_open_duration": "1s",
    "half_open_calls": 3,
    "slow_call_duration": "100ms",
}


@asynccontextmanager
async def stack(
    *,
    replayable: bool = True,
    budget: dict[str, float] | None = None,
    treatment_url: str | None = None,
    proxy: dict[str, Any] | None = None,
    read_timeout: str = "300ms",
    **experiment: Any,
) -> AsyncIterator[tuple[Embedded, Behaviour, dict[str, str]]]:
    behaviour = Behaviour()
    async with (
        serve_app(create_app("deterministic")) as control,
        serve_app(create_app("ml", behaviour, seed=3)) as treatment,
    ):
        upstreams = {"control": control, "treatment": treatment_url or treatment}
        config = make_config(
            upstreams,
            percentage=100,
            experiment=experiment,
            routes=[{"prefix": "/api/", "experiment": "exp", "replayable": replayable}],
            # The default retry budget unless a test sets one: a hung ML backend at 100% must
            # not turn the requests in flight into 504s with the budget users get.
            proxy={**({"retry_budget": budget} if budget else {}), **(proxy or {})},
            upstream_options={"read_timeout": read_timeout, "breaker": FAST_BREAKER},
        )
        async with embedded(config) as running:
            yield running, behaviour, upstreams


async def paced_load(
    session: ClientSession, url: str, *, rate: int = 200, seconds: float = 2.0, method: str = "POST"
) -> list[tuple[int, str, str]]:
    """`rate` requests per second for `seconds`: (status, served by, fallback reason) of each.
    `X-ABGate-Arm` is the arm a request was assigned to (treatment here, at 100%);
    `X-ABGate-Served-By` the upstream that answered."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    results: list[tuple[int, str, str]] = []
    assigned: set[str] = set()

    async def one(index: int) -> None:
        async with session.request(
            method, url, data=b'{"amount": 1}', headers={"X-User-Id": f"u{index}"}
        ) as response:
            await response.read()
            assigned.add(response.headers.get("X-ABGate-Arm", ""))
            results.append(
                (
                    response.status,
                    response.headers.get("X-ABGate-Served-By", ""),
                    response.headers.get("X-ABGate-Fallback", ""),
                )
            )

    tasks = []
    for index in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + index / rate - loop.time()))  # pacing, not waiting
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    assert assigned <= {"treatment", ""}, assigned  # a fallback keeps its assigned arm
    return results


async def breaker_state(session: ClientSession, control_url: str) -> dict[str, str]:
    async with session.get(f"{control_url}/api/breakers") as response:
        return {b["upstream"]: b["state"] for b in (await response.json())["breakers"]}


async def test_slow_ml_backend_trips_on_slow_calls(session: ClientSession) -> None:
    # Slow but never failing, however busy the machine: a read timeout far above the 150 ms
    # (with 300 ms, a loaded machine turned slow calls into timeouts, i.e. failures).
    async with stack(read_timeout="10s") as (running, behaviour, _):
        behaviour.latency_ms = 150  # slower than slow_call_duration, within read_timeout
        results = await paced_load(session, f"{running.proxy_url}{URL}")
        async with session.get(f"{running.control_url}/metrics") as response:
            metrics = await response.text()
    assert Counter(s for s, _, _ in results) == {200: len(results)}
    reasons = Counter(reason for _, _, reason in results)
    assert reasons["breaker-open"] > len(results) * 0.5
    # minimum_calls (20) slow answers are what trips it: all served by the treatment.
    assert Counter(arm for _, arm, reason in results if not reason)["treatment"] >= 20
    # It opened although the treatment upstream never failed: the slow calls tripped it.
    assert (
        'abgate_breaker_transitions_total{from="closed",to="open",upstream="treatment"}' in metrics
    )
    assert "abgate_upstream_errors_total{kind=" not in metrics


@pytest.mark.parametrize("failure", ["500s", "hung"])
async def test_failing_ml_backend_is_invisible_to_clients(
    session: ClientSession, failure: str
) -> None:
    async with stack() as (running, behaviour, _):
        if failure == "500s":
            behaviour.failure_rate = 1.0
        else:
            behaviour.latency_ms = 5000  # far past read_timeout (300 ms)
        results = await paced_load(session, f"{running.proxy_url}{URL}")
        statuses = Counter(status for status, _, _ in results)
        reasons = Counter(reason for _, _, reason in results)
        assert statuses == {200: len(results)}, statuses  # zero client-visible errors
        assert all(served == "control" for _, served, _ in results)
        first_reason = "status-500" if failure == "500s" else "timeout"
        assert reasons[first_reason] >= 5  # the calls that tripped the breaker ...
        # ... then it stayed open: it never closed again, and most answers came through it
        # (how many were sent before the first failure ended depends on the machine's pace).
        assert reasons["breaker-open"] > len(results) * 0.5
        assert (await breaker_state(session, running.control_url))["treatment"] in (
            "open",
            "half_open",
        )
        async with session.get(f"{running.control_url}/metrics") as response:
            text = await response.text()
        assert 'abgate_fallbacks_total{experiment="exp",reason="breaker-open"}' in text
        assert 'to="closed",upstream="treatment"' not in text  # never closed again
        # Fallback answers are not counted as the control arm's traffic ...
        control_ok = [
            line
            for line in text.splitlines()
            if line.startswith(
                'abgate_requests_total{arm="control",experiment="exp",status_class="2xx"'
            )
        ]
        assert control_ok == []
        # ... but measured in the treatment arm they were assigned to (intention to treat).
        await running.plane.flush_measurements()
        _, sums = await running.worker.store.read("exp")
        measured = {key[2]: value.count for key, value in sums.items() if key[3] == "error"}
        assert measured == {"treatment": len(results)}


async def test_killed_backend_then_recovery(session: ClientSession) -> None:
    port = free_port()
    behaviour = Behaviour()
    runner = web.AppRunner(create_app("ml", behaviour), access_log=None)
    await runner.setup()
    async with stack(treatment_url=f"http://127.0.0.1:{port}") as (running, _, _):
        # Nothing listens on the treatment port: connect errors, then the breaker opens.
        results = await paced_load(session, f"{running.proxy_url}{URL}", seconds=1.5)
        assert Counter(s for s, _, _ in results) == {200: len(results)}
        assert {r for _, _, r in results} <= {"connect", "breaker-open"}
        # The ML backend comes up: traffic returns to the configured split on its own.
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            async with asyncio.timeout(60):
                while True:
                    results = await paced_load(session, f"{running.proxy_url}{URL}", seconds=0.25)
                    if all(arm == "treatment" and not reason for _, arm, reason in results):
                        break
            assert (await breaker_state(session, running.control_url))["treatment"] == "closed"
        finally:
            await runner.cleanup()


async def test_non_replayable_requests_are_not_resent(session: ClientSession) -> None:
    async with stack(replayable=False) as (running, behaviour, _):
        behaviour.failure_rate = 1.0
        async with session.post(f"{running.proxy_url}{URL}", data=b"{}") as response:
            assert response.status == 500  # the ML answer, passed through: POST is not resent
            assert "X-ABGate-Fallback" not in response.headers
        async with session.get(f"{running.proxy_url}{URL}") as response:
            assert response.status == 200  # GET is idempotent: answered by control
            assert response.headers["X-ABGate-Fallback"] == "status-500"


async def test_retry_budget_limits_fallback_retries(session: ClientSession) -> None:
    async with stack(
        budget={"ratio": 0.0, "min_per_second": 0.3},  # 3 retries per 10 s
    ) as (running, behaviour, _):
        behaviour.failure_rate = 1.0
        statuses = []
        for index in range(4):  # fewer than consecutive_failures: the breaker stays closed
            async with session.get(
                f"{running.proxy_url}{URL}", headers={"X-User-Id": f"u{index}"}
            ) as response:
                statuses.append((response.status, response.headers.get("X-ABGate-Fallback")))
    assert statuses == [(200, "status-500")] * 3 + [(500, None)]


async def test_fallback_on_5xx_can_be_turned_off(session: ClientSession) -> None:
    async with stack(fallback_on_5xx=False) as (running, behaviour, _):
        behaviour.failure_rate = 1.0
        async with session.get(f"{running.proxy_url}{URL}") as response:
            assert response.status == 500


async def test_forced_states(session: ClientSession) -> None:
    async with stack() as (running, behaviour, _):
        api = f"{running.control_url}/api/breakers/treatment"
        async with session.post(api, json={"state": "forced_open"}) as response:
            assert (await response.json())["state"] == "forced_open"
        async with session.get(f"{running.proxy_url}{URL}") as response:
            assert response.headers["X-ABGate-Fallback"] == "breaker-open"
        behaviour.failure_rate = 1.0
        async with session.post(api, json={"state": "forced_closed"}) as response:
            assert response.status == 200
        for _ in range(10):  # failures never open a forced-closed breaker
            async with session.get(f"{running.proxy_url}{URL}") as response:
                assert response.headers["X-ABGate-Fallback"] == "status-500"
        assert (await breaker_state(session, running.control_url))["treatment"] == "forced_closed"
        async with session.get(f"{running.control_url}/api/breakers") as response:
            listed = await response.json()
        assert listed["instances"][0]["breakers"]["treatment"] == "forced_closed"
        async with session.post(api, json={"state": "auto"}) as response:
            assert (await response.json())["state"] == "closed"
        async with session.post(api, json={"state": "sideways"}) as response:
            assert response.status == 400
        async with session.post(
            f"{running.control_url}/api/breakers/nope", json={"state": "auto"}
        ) as response:
            assert response.status == 404


async def test_early_refusals_in_half_open_do_not_keep_the_breaker_half_open(
    session: ClientSession,
) -> None:
    """Requests admitted as half-open trials that end before reaching the ML upstream (a
    body over max_body_size) release their ticket: the next requests are the trial, and the
    breaker closes (issue 23 §3: it stayed half-open for good, everyone on control)."""
    async with stack(proxy={"max_body_size": "1KiB", "buffer_body_size": "1KiB"}) as (
        running,
        _,
        _,
    ):
        breaker = running.plane.breakers["treatment"]
        for _ in range(5):
            breaker.record(perf_counter(), failed=True, slow=False)
        assert breaker.state is BreakerState.OPEN
        await until(lambda: perf_counter() >= breaker.open_until)  # the open wait (300 ms)
        for _ in range(FAST_BREAKER["half_open_calls"]):  # type: ignore[call-overload]
            async with session.post(
                f"{running.proxy_url}{URL}", data=b"x" * 4096, headers={"X-User-Id": "u"}
            ) as response:
                assert response.status == 413
        assert breaker.state is BreakerState.HALF_OPEN
        served = []
        for index in range(5):
            async with session.post(
                f"{running.proxy_url}{URL}", data=b"{}", headers={"X-User-Id": f"u{index}"}
            ) as response:
                assert response.status == 200
                served.append(response.headers["X-ABGate-Served-By"])
        assert served == ["treatment"] * 5
        assert breaker.state is BreakerState.CLOSED


async def test_waiting_for_a_pool_slot_is_abgates_congestion_not_a_breaker_failure(
    session: ClientSession,
) -> None:
    """All of the ML upstream's connections busy past connect_timeout (as a hung ML backend
    leaves them before its first timeout opens the breaker): a request that may be sent
    again is answered by control (`pool_timeout`), one that may not gets a 503 saying so; both
    counted, and no failure for the breaker of a healthy upstream (issue 23 §3)."""
    from tests.servers import echo_app

    async with serve_app(echo_app()) as url:
        config = make_config(
            {"control": url, "treatment": url},
            percentage=100,
            routes=[{"prefix": "/", "experiment": "exp"}],
            upstream_options={"pool_size": 1, "connect_timeout": "300ms", "read_timeout": "5s"},
        )
        async with embedded(config) as running:
            slow = asyncio.create_task(session.get(f"{running.proxy_url}/slow/1.5"))
            pool = running.plane._pools["treatment"]
            await until(lambda: pool.open_connections == 1 and not pool.idle_connections)
            async with session.get(f"{running.proxy_url}/fast") as response:
                assert response.status == 200
                assert response.headers["X-ABGate-Fallback"] == "pool_timeout"
                assert response.headers["X-ABGate-Served-By"] == "control"
            async with session.post(f"{running.proxy_url}/fast", data=b"{}") as response:
                assert response.status == 503  # a POST on a route not replayable: not resent
                payload = await response.json()
            async with await slow as response:
                assert response.status == 200
            async with session.get(f"{running.control_url}/metrics") as response:
                metrics = await response.text()
            breaker = running.plane.breakers["treatment"]
            assert breaker.window(perf_counter()) == (1, 0)  # the slow call, a success
    assert payload["error"] == "all 1 connections busy for 0.3s"
    assert payload["upstream"] == "treatment"
    assert 'abgate_fallbacks_total{experiment="exp",reason="pool_timeout"} 1.0' in metrics
    assert 'abgate_local_responses_total{reason="pool_busy",status="503"} 1.0' in metrics
    assert 'abgate_upstream_errors_total{kind="pool_timeout",upstream="treatment"} 2.0' in metrics
