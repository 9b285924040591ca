"""No rollout left unattended, on a real redis-server: Redis restarted empty at each state
of a rollout puts back the rollout, its history, the flag audit and the phase (the controller
holds meanwhile and restarts the stage's clock); a standby with no copy escalates the flag
to a person; abort always works after a change by hand, promote answers 409; Redis refusing
writes is said once, with no reconnect storm."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from abgate.config.model import Config
from abgate.control.serve import Embedded, embedded
from abgate.state.redis_flags import RedisFlagStore
from abgate.state.rollouts import Rollout
from tests.redis_server import RedisServer, redis_server
from tests.servers import make_config
from tests.test_rollout import FAST, api, polled, until

PLAN = {**FAST, "min_duration": "1h", "stages": [25, {"percentage": 50, "approval": True}, 100]}


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path) as server:
        yield server


def redis_config(
    agents: dict[str, str], redis: RedisServer, state_file: Path | None = None
) -> Config:
    return make_config(
        agents,
        percentage=0,
        experiment={"rollout": PLAN},
        flags={
            "redis_url": redis.url,
            "state_file": str(state_file) if state_file else None,
            "heartbeat_interval": "200ms",
        },
    )


async def stored(running: Embedded) -> Rollout:
    rollout = await running.rollouts.rollouts.get("exp")
    assert rollout is not None
    return rollout


async def into_state(session: ClientSession, running: Embedded, state: str) -> None:
    """The rollout into `state`, by the API where a person gets it there, else written."""
    await api(session, running, "POST", "/api/rollouts/exp", {"reason": "go"}, expect=201)
    if state in ("paused", "aborted"):
        action = "pause" if state == "paused" else "abort"
        await api(session, running, "POST", f"/api/rollouts/exp/{action}", {})
    elif state == "completed":
        for _ in range(2):
            await api(session, running, "POST", "/api/rollouts/exp/promote", {"reason": "skip"})
    if state not in ("running", "paused", "aborted"):
        rollout = await stored(running)
        await running.rollouts.rollouts.put(rollout.next(state=state), rollout.generation)


async def view_once(
    session: ClientSession, running: Embedded, predicate: Any, timeout: float = 40.0
) -> dict[str, Any]:
    """The rollout's view once `predicate` holds; answers other than 200 (Redis coming back)
    are waited through, like any other view that does not hold yet."""
    async with asyncio.timeout(timeout):
        while True:
            async with session.get(running.control_url + "/api/rollouts/exp") as response:
                view: dict[str, Any] = await response.json()
                if response.status == 200 and predicate(view):
                    return view
            await asyncio.sleep(0.05)


STATES = ["running", "awaiting_approval", "paused", "escalated", "rolled_back", "completed"]


@pytest.mark.parametrize("state", [*STATES, "aborted"])
async def test_redis_restarted_empty_at_each_state_of_a_rollout(
    session: ClientSession, agents: dict[str, str], redis: RedisServer, state: str
) -> None:
    async with embedded(redis_config(agents, redis)) as running:
        await into_state(session, running, state)
        before = await api(session, running, "GET", "/api/rollouts/exp")
        events = (await api(session, running, "GET", "/api/rollouts/exp/history"))["history"]
        audit = (await api(session, running, "GET", "/api/flags/exp/history"))["history"]
        flag = running.flags.get("exp")
        assert before["state"] == state
        writer = running.backend.store
        assert isinstance(writer, RedisFlagStore)
        reseeded = writer.reseeded
        await redis.kill()
        await redis.start()  # empty
        after = await view_once(session, running, lambda view: view["state"] == state)
        await polled(lambda: writer.reseeded > reseeded)  # the flag store's re-seed ran too
        # Put back as it was: same stage, and the controller never moved the flag meanwhile.
        assert after["stage"]["index"] == before["stage"]["index"]
        assert running.flags.get("exp") == flag
        restored = (await api(session, running, "GET", "/api/rollouts/exp/history"))["history"]
        assert restored[0]["transition"] == "restored"
        assert restored[1:] == events
        if state in ("running", "awaiting_approval", "paused", "escalated"):
            # The stage's measurements went with Redis: its clock starts again.
            assert after["stage"]["started_at"] > before["stage"]["started_at"]
            assert "clock starts again" in after["reason"]
        client = redis.client()
        try:
            phases = await client.hgetall("{abgate}:phases:exp")
        finally:
            await client.aclose()
        assert str(flag.phase) in phases
        re_audit = (await api(session, running, "GET", "/api/flags/exp/history"))["history"]
        assert [e["version"] for e in re_audit] == [e["version"] for e in audit]
        experiment = await api(session, running, "GET", "/api/experiments/exp")
        assert experiment["current_phase"] is not None
        assert experiment["current_phase"]["id"] == flag.phase


async def test_a_restarted_control_process_puts_back_from_its_state_file(
    session: ClientSession, agents: dict[str, str], redis: RedisServer, tmp_path: Path
) -> None:
    """Both gone at once (the control process and Redis's data): the state file's copy."""
    config = redis_config(agents, redis, tmp_path / "state.json")
    async with embedded(config) as running:
        await into_state(session, running, "awaiting_approval")
        before = await api(session, running, "GET", "/api/rollouts/exp")
    await redis.kill()
    await redis.start()
    async with embedded(config) as running:
        after = await view_once(session, running, lambda view: "restored" in view["reason"])
        history = (await api(session, running, "GET", "/api/rollouts/exp/history"))["history"]
    assert after["state"] == "awaiting_approval"
    assert after["stage"]["index"] == before["stage"]["index"] == 0
    assert [e["transition"] for e in history][:2] == ["restored", "started"]


async def test_with_no_copy_left_the_flag_goes_to_a_person(
    session: ClientSession, agents: dict[str, str], redis: RedisServer
) -> None:
    """The acting control process dies, Redis restarts empty, and the standby never read the
    rollout: the flag it sees at 25%, set by a rollout, is escalated, not left unattended."""
    config = redis_config(agents, redis)
    async with contextlib.AsyncExitStack() as one:
        acting = await one.enter_async_context(embedded(config))
        await polled(lambda: acting.rollouts.acting)  # alone, it takes the lease
        async with embedded(config) as standby:
            assert not standby.rollouts.acting
            await api(session, acting, "POST", "/api/rollouts/exp", {"reason": "go"}, expect=201)
            await polled(lambda: standby.flags.get("exp").percentage == 25)
            await one.aclose()
            await redis.kill()
            await redis.start()
            view = await view_once(session, standby, lambda v: v["state"] == "escalated")
    assert view["stage"]["percentage"] == 25
    assert "resume or abort" in view["reason"]


async def test_abort_works_after_a_hand_change_and_promote_says_409(
    session: ClientSession, agents: dict[str, str], redis: RedisServer
) -> None:
    async with embedded(redis_config(agents, redis)) as running:
        await api(session, running, "POST", "/api/rollouts/exp", {"reason": "go"}, expect=201)
        for percentage in (40, 45):  # paused at the first change; the second it never saw
            await api(session, running, "POST", "/api/flags/exp", {"percentage": percentage})
            await until(session, running, lambda v: v["state"] == "paused")
        refused = await api(session, running, "POST", "/api/rollouts/exp/promote", {}, expect=409)
        assert "changed by alice to 45%" in refused["error"]
        assert running.flags.get("exp").percentage == 45
        aborted = await api(session, running, "POST", "/api/rollouts/exp/abort", {})
        assert aborted["state"] == "aborted"
        assert running.flags.get("exp").percentage == 0
        # One rule for both: a finished rollout is neither approved nor promoted.
        for action in ("approve", "promote"):
            body: dict[str, Any] = {"stage": 50} if action == "approve" else {}
            answer = await api(
                session, running, "POST", f"/api/rollouts/exp/{action}", body, expect=409
            )
            assert answer["error"] == "the rollout is aborted"


async def test_redis_refusing_writes_is_said_once_without_reconnecting(
    session: ClientSession,
    agents: dict[str, str],
    redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with embedded(redis_config(agents, redis)) as running:
        # The data plane's sync: its heartbeats are the writes (the instance registry).
        assert running.data.backend is not None
        sync = running.data.backend.sync
        assert sync is not None
        await polled(lambda: sync.connected)
        reconnects, resyncs = sync.reconnects, sync.resyncs
        client = redis.client()
        try:
            with caplog.at_level(logging.INFO, logger="abgate.flags"):
                await client.config_set("maxmemory-policy", "noeviction")
                await client.config_set("maxmemory", "1")
                await polled(lambda: sync.write_refusals >= 5)  # five heartbeats refused
                await client.config_set("maxmemory", "0")
                await polled(lambda: sync.write_refusals > 0 and sync.refusing is None)
        finally:
            await client.aclose()
        assert (sync.reconnects, sync.resyncs) == (reconnects, resyncs)
        said = [r.getMessage() for r in caplog.records if r.name == "abgate.flags"]
        assert len([m for m in said if "refuses writes" in m]) == 1, said
        assert len([m for m in said if "takes writes again" in m]) == 1, said
        assert not [m for m in said if "unreachable" in m], said
