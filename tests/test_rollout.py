"""The rollout controller end to end: real abgate, real demo agents, bounded real traffic,
plans with stages of a second or so."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from abgate.config.model import Config
from abgate.control.serve import Embedded, embedded
from abgate.state.rollouts import Lease, RedisRollouts, Rollout, RolloutConflict
from scripts.demo_agent import Behaviour, create_app
from tests.redis_server import redis_server
from tests.servers import make_config, serve_app

URL = "/api/agent/credit/decide"
JSON = {"Content-Type": "application/json"}
FAST = {
    "min_duration": "300ms",
    "tick": "100ms",
    "bake": "500ms",
    "max_hold": "1h",
    "breaker_grace": "300ms",
    "guardrails": [{"metric": "error", "margin": 0.05}, {"metric": "latency", "margin": "200%"}],
}
MAX_REQUESTS = 40_000  # the most any test's traffic sends


@contextlib.asynccontextmanager
async def stack(
    plan: dict[str, Any],
    behaviour: Behaviour | None = None,
    *,
    state_file: Path | None = None,
    percentage: float = 0,
    breaker: dict[str, Any] | None = None,
) -> AsyncIterator[Embedded]:
    async with (
        serve_app(create_app("deterministic")) as control,
        serve_app(create_app("ml", behaviour or Behaviour(), seed=3)) as treatment,
    ):
        config = make_config(
            {"control": control, "treatment": treatment},
            percentage=percentage,
            experiment={"rollout": plan, "fallback": False},
            flags={"state_file": str(state_file) if state_file else None},
            upstream_options={"breaker": breaker} if breaker else None,
        )
        async with embedded(config) as running:
            yield running


@contextlib.asynccontextmanager
async def traffic(
    session: ClientSession, running: Embedded, *, concurrency: int = 4, pause: float = 0.0
) -> AsyncIterator[list[int]]:
    """Requests from distinct users until the block ends (at most MAX_REQUESTS)."""
    sent = [0]
    stop = asyncio.Event()

    async def one_client(worker: int) -> None:
        while not stop.is_set() and sent[0] < MAX_REQUESTS:
            sent[0] += 1
            user = f"user-{worker}-{sent[0]}"
            async with session.post(
                running.proxy_url + URL, data=b'{"amount": 5}', headers={"X-User-Id": user}
            ) as response:
                await response.read()
            if pause:
                await asyncio.sleep(pause)

    tasks = [asyncio.create_task(one_client(i)) for i in range(concurrency)]
    try:
        yield sent
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def api(
    session: ClientSession,
    running: Embedded,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    expect: int = 200,
) -> Any:
    async with session.request(
        method, running.control_url + path, json=body, headers={**JSON, "X-ABGate-Actor": "alice"}
    ) as response:
        data = await response.json()
        assert response.status == expect, data
        return data


async def polled(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Until `condition` holds: state another task changes, with no event to await."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def until(
    session: ClientSession,
    running: Embedded,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 40.0,
) -> dict[str, Any]:
    """The rollout's view once `predicate` holds (polled every 50 ms); on a timeout, the
    last view seen says where it stood."""
    view: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                view = await api(session, running, "GET", "/api/rollouts/exp")
                if predicate(view):
                    return view
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s; the rollout stood at {view}") from None


async def test_a_better_treatment_goes_through_every_stage_with_approval(
    session: ClientSession,
) -> None:
    plan = {**FAST, "stages": [25, {"percentage": 50, "approval": True}, 100]}
    async with stack(plan) as running, traffic(session, running):
        started = await api(
            session, running, "POST", "/api/rollouts/exp", {"reason": "ship it"}, expect=201
        )
        assert started["state"] == "running"
        assert started["stage"]["percentage"] == 25
        waiting = await until(session, running, lambda v: v["state"] == "awaiting_approval")
        assert waiting["stage"]["percentage"] == 25  # not promoted without a person
        assert running.flags.get("exp").percentage == 25
        approved = await api(
            session,
            running,
            "POST",
            "/api/rollouts/exp/approve",
            {"stage": 50, "reason": "numbers look fine"},
        )
        assert approved["stage"]["percentage"] == 50
        done = await until(session, running, lambda v: v["state"] == "completed")
        assert done["stage"]["percentage"] == 100
        assert running.flags.get("exp").percentage == 100
        history = (await api(session, running, "GET", "/api/rollouts/exp/history"))["history"]
    transitions = [e["transition"] for e in reversed(history) if e["transition"]]
    assert transitions == ["started", "awaiting_approval", "running", "running", "completed"]
    promotion = next(e for e in history if e["change"] == "stage 2: 100%")
    assert promotion["decision"] == "continue"
    gates = {g["name"]: g for g in promotion["inputs"]["gates"]}
    assert gates["samples"]["status"] == "pass"
    assert gates["samples"]["have"]["treatment"] >= gates["samples"]["needed"]["treatment"]
    approval = next(e for e in history if e["change"] == "approved 50%")
    assert approval["actor"] == "alice"


async def test_the_holdout_is_compared_then_released_to_100(session: ClientSession) -> None:
    """The last stage keeps 10% on control through its bake, says so (never "100%"), and
    goes to 100% only once its gates pass."""
    plan = {**FAST, "stages": [50, 100], "holdout": {"percentage": 10}}
    async with stack(plan) as running, traffic(session, running):
        await api(session, running, "POST", "/api/rollouts/exp", {"reason": "ship"}, expect=201)
        held = await until(session, running, lambda v: v["stage"]["phase"] == "holdout")
        assert held["stage"]["percentage"] == 90
        assert held["stage"]["holdout"] == 10
        assert running.flags.get("exp").percentage == 90
        done = await until(session, running, lambda v: v["state"] == "completed")
        assert (done["stage"]["phase"], done["stage"]["percentage"]) == ("released", 100)
        assert running.flags.get("exp").percentage == 100
        history = (await api(session, running, "GET", "/api/rollouts/exp/history"))["history"]
    changes = [e["change"] for e in reversed(history) if e["change"]]
    assert changes == [
        "stage 0: 50%",
        "stage 1: 90% (holdout: 10% kept on control)",
        "holdout released: 100%",
    ]
    released = history[0]
    assert (released["decision"], released["state"]) == ("complete", "completed")
    gates = {g["name"]: g["status"] for g in released["inputs"]["gates"]}
    assert gates["srm"] == gates["samples"] == gates["non_inferiority"] == "pass"


async def test_a_person_may_release_the_holdout_early(session: ClientSession) -> None:
    """Promote at the holdout releases it to 100% (an override); at a last stage without
    one there is nothing further."""
    plan = {**FAST, "stages": [100], "holdout": {"percentage": 5}, "bake": "1h"}
    async with stack(plan) as running:
        started = await api(session, running, "POST", "/api/rollouts/exp", {}, expect=201)
        assert (started["stage"]["phase"], started["stage"]["percentage"]) == ("holdout", 95)
        assert running.flags.get("exp").percentage == 95
        released = await api(
            session, running, "POST", "/api/rollouts/exp/promote", {"reason": "seen enough"}
        )
        assert (released["state"], released["stage"]["phase"]) == ("completed", "released")
        assert running.flags.get("exp").percentage == 100
        assert released["reason"] == "override by alice: seen enough"


async def test_a_release_written_before_a_crash_is_adopted(session: ClientSession) -> None:
    """The controller's own write of 100% at the holdout, its record lost (a crash between
    the two): the next tick completes the rollout, it does not pause it as a change by hand."""
    plan = {**FAST, "stages": [100], "holdout": {"percentage": 5}, "bake": "1h"}
    async with stack(plan) as running:
        await api(session, running, "POST", "/api/rollouts/exp", {}, expect=201)
        async with session.post(
            running.control_url + "/api/flags/exp",
            json={"percentage": 100, "reason": "released"},
            headers={**JSON, "X-ABGate-Actor": "rollout-controller"},
        ) as response:
            assert response.status == 200, await response.text()
        done = await until(session, running, lambda v: v["state"] != "running")
    assert done["state"] == "completed", done["reason"]
    assert done["reason"].startswith("holdout released before a restart")


@pytest.mark.parametrize("harm", ["errors", "latency"])
async def test_a_worse_treatment_is_rolled_back_naming_the_metric(
    session: ClientSession, harm: str
) -> None:
    behaviour = Behaviour()
    if harm == "errors":
        behaviour.failure_rate = 0.3
    else:
        behaviour.latency_ms = 20.0
    # A breaker that stays closed: it would trip on these errors first (and then the
    # breaker rule rolls back), and this test is about the statistical gates.
    plan = {**FAST, "stages": [50, 100]}
    closed = {"consecutive_failures": 1_000_000, "failure_rate": 1.0, "slow_call_rate": 1.0}
    async with (
        stack(plan, behaviour, breaker=closed) as running,
        traffic(session, running, concurrency=8),
    ):
        await api(session, running, "POST", "/api/rollouts/exp", {}, expect=201)
        done = await until(session, running, lambda v: v["state"] == "rolled_back")
        assert running.flags.get("exp").percentage == 0
        verdict = await api(session, running, "GET", "/api/rollouts/exp/verdict")
    metric = "error" if harm == "errors" else "latency"
    assert done["reason"].startswith(f"harm on {metric}")
    assert done["stage"]["percentage"] == 50  # nothing promoted
    assert done["incident"]
    assert verdict["decision"] == "rollback"


async def test_too_little_traffic_holds_with_the_samples_needed_and_an_eta(
    session: ClientSession,
) -> None:
    plan = {**FAST, "stages": [5, 100], "guardrails": [{"metric": "latency", "margin": "1%"}]}
    async with stack(plan) as running, traffic(session, running, concurrency=1, pause=0.01):
        await api(session, running, "POST", "/api/rollouts/exp", {}, expect=201)
        view = await until(
            session,
            running,
            lambda v: "insufficient samples" in v["reason"] and v["eta_seconds"] is not None,
        )
        call = await api(
            session,
            running,
            "POST",
            "/api/rollout/decision",
            {"current_percentage": 5, "target_percentage": 25},
        )
        argo = await api(session, running, "GET", "/api/rollouts/exp/verdict")
        flagger = await api(
            session, running, "POST", "/api/rollouts/exp/gates/confirm-promotion", {}, expect=403
        )
    assert view["state"] == "running"
    assert view["eta_seconds"] > 0
    assert " of " in view["reason"]
    assert call["decision"] == "hold"
    assert "insufficient" in call["reason"]
    assert argo["decision"] == "hold"
    assert flagger["decision"] == "hold"


async def test_an_approval_is_recorded_once_and_only_for_a_stage_that_waits_for_one(
    session: ClientSession,
) -> None:
    """Ahead of time, a stage that waits for a person may be approved, once; a stage that
    needs no approval may not be: history would say what did not happen (trial)."""
    plan = {**FAST, "min_duration": "1h", "stages": [25, {"percentage": 50, "approval": True}, 100]}
    async with stack(plan) as running:
        await api(session, running, "POST", "/api/rollouts/exp", {}, expect=201)
        path = "/api/rollouts/exp/approve"
        await api(session, running, "POST", path, {"reason": "ahead"})
        again = await api(session, running, "POST", path, {"reason": "again"}, expect=409)
        assert again["error"] == "50% is approved already"
    async with stack({**FAST, "min_duration": "1h", "stages": [25, 100]}) as running:
        await api(session, running, "POST", "/api/rollouts/exp", {}, expect=201)
        needless = await api(session, running, "POST", path, {"reason": "why not"}, expect=409)
        assert needless["error"] == "the next stage, 100%, needs no approval"
        history = (await api(session, running, "GET", "/api/rollouts/exp/history"))["history"]
    assert not [e for e in history if (e["change"] or "").startswith("approved")]


async def test_a_person_changing_the_percentage_pauses_the_rollout(session: ClientSession) -> None:
    plan = {**FAST, "stages": [25, 100], "min_duration": "1h"}
    async with stack(plan) as running, traffic(session, running):
        await api(session, running, "POST", "/api/rollouts/exp", {}, expect=201)
        await api(
            session, running, "POST", "/api/flags/exp", {"percentage": 10, "reason": "hands on"}
        )
        view = await until(session, running, lambda v: v["state"] == "paused")
        assert running.flags.get("exp").percentage == 10  # nothing overwritten
    assert view["reason"] == "changed by alice to 10% (hands on); paused, nothing overwritten"


async def test_treatment_breaker_open_past_the_grace_rolls_back(session: ClientSession) -> None:
    plan = {**FAST, "stages": [50, 100], "min_duration": "1h"}
    async with stack(plan) as running, traffic(session, running):
        await api(session, running, "POST", "/api/rollouts/exp", {}, expect=201)
        await api(session, running, "POST", "/api/breakers/treatment", {"state": "forced_open"})
        view = await until(session, running, lambda v: v["state"] == "rolled_back")
        rollback = await api(session, running, "POST", "/api/rollouts/exp/gates/rollback", {})
    assert view["reason"].startswith("treatment breaker open")
    assert rollback["decision"] == "rollback"


async def test_a_restart_resumes_the_same_stage_on_the_same_clock(
    session: ClientSession, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    plan = {**FAST, "stages": [25, 50, 100], "min_duration": "1s"}
    async with stack(plan, state_file=state) as running, traffic(session, running):
        await api(session, running, "POST", "/api/rollouts/exp", {}, expect=201)
        before = await until(session, running, lambda v: v["stage"]["index"] == 1)
    async with stack(plan, state_file=state) as running:
        after = await api(session, running, "GET", "/api/rollouts/exp")
        assert after["stage"] == before["stage"]  # same stage, same started_at
        assert running.flags.get("exp").percentage == 50
        async with traffic(session, running):
            done = await until(session, running, lambda v: v["state"] == "completed")
        history = (await api(session, running, "GET", "/api/rollouts/exp/history"))["history"]
    assert done["stage"]["percentage"] == 100
    changes = [e["change"] for e in reversed(history) if e["change"]]
    assert changes == ["stage 0: 25%", "stage 1: 50%", "stage 2: 100%"]  # none twice


async def test_actions_and_bad_requests(session: ClientSession) -> None:
    plan = {**FAST, "stages": [25, 100], "min_duration": "1h"}
    async with stack(plan) as running:
        await api(session, running, "GET", "/api/rollouts/exp", expect=404)
        await api(session, running, "POST", "/api/rollouts/nope", {}, expect=404)
        bad = await api(
            session,
            running,
            "POST",
            "/api/rollouts/exp",
            {"plan": {"stages": [50, 25], "tick": "banana", "power": 0.01}},
            expect=400,
        )  # a refused value hides no check that does not read it
        assert [p["path"] for p in bad["problems"]] == ["tick", "stages[1]", "power"]
        rate = {"guardrails": [{"metric": "error", "margin": 1.5}]}  # a rate moves by < 1
        bad = await api(session, running, "POST", "/api/rollouts/exp", {"plan": rate}, expect=400)
        assert "must stay in (0, 1)" in bad["problems"][0]["message"], bad
        await api(session, running, "POST", "/api/rollouts/exp", {}, expect=201)
        await api(session, running, "POST", "/api/rollouts/exp", {}, expect=409)
        paused = await api(session, running, "POST", "/api/rollouts/exp/pause", {"reason": "lunch"})
        assert paused["state"] == "paused"
        resumed = await api(session, running, "POST", "/api/rollouts/exp/resume", {})
        assert resumed["state"] == "running"
        promoted = await api(
            session, running, "POST", "/api/rollouts/exp/promote", {"reason": "skip"}
        )
        assert promoted["stage"]["percentage"] == 100
        await api(
            session,
            running,
            "POST",
            "/api/incidents",
            {"experiment": "exp", "description": "pager"},
        )
        aborted = await api(session, running, "POST", "/api/rollouts/exp/abort", {})
        assert aborted["state"] == "aborted"
        assert running.flags.get("exp").percentage == 0
        stability = await api(session, running, "GET", "/api/metrics/exp/stability")
        assert stability["incidents_count"] == 1  # the one opened by hand
        assert stability["percentage"] == 0
        impact = await api(session, running, "GET", "/api/metrics/exp/business-impact")
        assert set(impact["metrics"]) == {"accuracy", "satisfaction"}
        long_term = await api(session, running, "GET", "/api/metrics/exp/long-term-stability")
        assert 0 < long_term["days_at_100_percent"] < 1  # promoted to 100%, then aborted
        final = await api(session, running, "GET", "/api/metrics/exp/final-assessment")
        assert final["rollout_state"] == "aborted"
        await api(session, running, "GET", "/api/metrics/nope/stability", expect=404)
        listed = await api(session, running, "GET", "/api/rollouts")
        assert [r["state"] for r in listed["rollouts"]] == ["aborted"]
        async with session.get(running.control_url + "/metrics") as response:
            text = await response.text()
    assert 'abgate_rollout_state{experiment="exp",state="aborted"} 1.0' in text


async def test_two_control_processes_on_one_redis_one_acts_and_the_other_takes_over(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    async with redis_server(tmp_path) as redis:

        def config(name: str) -> Config:
            return make_config(
                agents,
                percentage=0,
                experiment={"rollout": {**FAST, "stages": [25, 50, 100], "min_duration": "1s"}},
                flags={
                    "redis_url": redis.url,
                    "state_file": str(tmp_path / f"{name}.json"),
                    "heartbeat_interval": "200ms",
                },
            )

        async with contextlib.AsyncExitStack() as one, contextlib.AsyncExitStack() as two:
            first = await one.enter_async_context(embedded(config("first")))
            second = await two.enter_async_context(embedded(config("second")))
            await polled(lambda: first.rollouts.acting != second.rollouts.acting)
            (acting, its_stack), (standby, _) = sorted(
                [(first, one), (second, two)], key=lambda pair: not pair[0].rollouts.acting
            )
            await api(session, acting, "POST", "/api/rollouts/exp", {}, expect=201)
            seen = await api(session, standby, "GET", "/api/rollouts/exp")
            assert seen["state"] == "running"  # one state, readable from both
            assert not seen["acting"]
            await its_stack.aclose()  # the acting process goes away
            await polled(lambda: standby.rollouts.acting)
            async with traffic(session, standby):
                done = await until(session, standby, lambda v: v["state"] == "completed")
            assert done["stage"]["percentage"] == 100


async def test_a_lease_that_expires_passes_on_and_fences_the_old_holder(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as redis:
        client = redis.client()
        try:
            old = Lease(client, "t", "old", ttl=0.3)
            new = Lease(client, "t", "new", ttl=0.3)
            assert await old.hold()
            assert not await new.hold()
            store_old = RedisRollouts(client, "t", old)
            rollout = Rollout("exp", "running", 0, 1.0, 1, 1.0, "me")
            await store_old.put(rollout, None)
            # old stops renewing (a paused process): new gets it once it expires
            async with asyncio.timeout(60):
                while not await new.hold():  # noqa: ASYNC110 (each try is a Redis call)
                    await asyncio.sleep(0.05)
            assert new.generation > old.generation
            with pytest.raises(RolloutConflict):
                await store_old.put(rollout.next(), rollout.generation)
            store_new = RedisRollouts(client, "t", new)
            await store_new.put(rollout.next(), rollout.generation)
            with pytest.raises(RolloutConflict):  # compare-and-set on the generation
                await store_new.put(rollout.next(), rollout.generation)
        finally:
            await client.aclose()
