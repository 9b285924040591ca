"""A rollout's history records decisions when they change: a stage waiting for a person's
approval is one entry, however many ticks pass (it was one per tick: 26 in 70 s)."""

from __future__ import annotations

import asyncio

from aiohttp import ClientSession

from tests.test_rollout import FAST, api, polled, stack, traffic, until


async def test_awaiting_approval_is_recorded_once(session: ClientSession) -> None:
    plan = {**FAST, "stages": [25, {"percentage": 50, "approval": True}, 100]}
    async with stack(plan) as running, traffic(session, running):
        await api(session, running, "POST", "/api/rollouts/exp", {}, expect=201)
        await until(session, running, lambda v: v["state"] == "awaiting_approval")
        decisions = running.rollouts.decisions
        seen = decisions.get(("continue", "safe"), 0)
        await polled(lambda: decisions.get(("continue", "safe"), 0) >= seen + 10)  # 10 ticks
        history = (await api(session, running, "GET", "/api/rollouts/exp/history"))["history"]
    waiting = [e for e in history if e["state"] == "awaiting_approval"]
    assert len(waiting) == 1, [(e["decision"], e["reason"]) for e in waiting]
    assert waiting[0]["transition"] == "awaiting_approval"


async def test_a_persons_approval_waits_for_the_loops_decision(session: ClientSession) -> None:
    """The loop's tick and a person's action never write over each other: the approval
    waits while the loop decides on a rollout, then applies (a demo's approval raced a tick
    and failed with a conflict, answered 500)."""
    plan = {**FAST, "stages": [25, {"percentage": 50, "approval": True}, 100]}
    async with stack(plan) as running, traffic(session, running):
        await api(session, running, "POST", "/api/rollouts/exp", {}, expect=201)
        await until(session, running, lambda v: v["state"] == "awaiting_approval")
        controller = running.rollouts
        async with controller.deciding:  # the loop is deciding
            approval = asyncio.create_task(
                api(session, running, "POST", "/api/rollouts/exp/approve", {"reason": "ok"})
            )
            done, _ = await asyncio.wait({approval}, timeout=0.5)
            assert not done  # it waits for the decision in progress
        view = await approval  # and then applies
        assert view["stage"]["percentage"] == 50
