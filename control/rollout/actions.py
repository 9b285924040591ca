"""A person's actions on a rollout: start, approve, pause, resume, abort, promote (an
override), an incident opened or closed. Each is checked against the rollout's state,
written compare-and-set (the flag on the version the rollout expects, the rollout on its
generation) and recorded with who did it and why; the control API calls them.

Functions of what they use of the controller (`Acting`), one at a time with the loop's
decisions (`RolloutController.deciding`): the loop and a person would otherwise both read
one version, and the second to write would fail with a conflict.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from abgate.config.fields import shown
from abgate.config.model import RolloutPlan
from abgate.control.rollout import moves
from abgate.control.rollout.errors import RolloutError, UnknownRollout, changed_by_hand
from abgate.control.rollout.evaluation import Evaluated, Seen, evaluate
from abgate.control.rollout.moves import Moving
from abgate.control.rollout.records import stage_change
from abgate.state.flags import VersionConflict
from abgate.state.rollouts import ACTIVE, FINISHED, Rollout, RolloutStore

P = ParamSpec("P")
R = TypeVar("R")
ABORT_TRIES = 5  # re-reads of a flag that keeps changing while an abort writes it


class Acting(Moving, Evaluated, Protocol):
    """What the actions read and do of the rollout controller (controller.py), beside what
    the moves and an evaluation use: declared here so that the two modules do not import
    each other."""

    rollouts: RolloutStore
    starting: asyncio.Lock  # a start, against the orphan check (recovery.py)
    deciding: asyncio.Lock  # one decision at a time: the loop's or a person's

    def plan_of(self, rollout: Rollout) -> RolloutPlan: ...

    async def get(self, name: str) -> Rollout: ...


def one_at_a_time(
    action: Callable[Concatenate[Acting, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Acting, P], Coroutine[Any, Any, R]]:
    """A person's action on a rollout, taken while the loop is not deciding on one."""

    @functools.wraps(action)
    async def one_at_a_time(controller: Acting, /, *args: P.args, **kwargs: P.kwargs) -> R:
        async with controller.deciding:
            return await action(controller, *args, **kwargs)

    return one_at_a_time


async def start(
    controller: Acting, name: str, plan: dict[str, Any] | None, actor: str, reason: str
) -> Rollout:
    # Its flag is written a moment before its state: the orphan check waits.
    async with controller.starting:
        return await _start(controller, name, plan, actor, reason)


async def _start(
    controller: Acting, name: str, plan: dict[str, Any] | None, actor: str, reason: str
) -> Rollout:
    experiment = controller.config.experiments.get(name)
    if experiment is None:
        raise UnknownRollout(f"unknown experiment {shown(name)}")
    held = await controller.rollouts.get(name)
    if held is not None and held.state not in FINISHED:
        raise RolloutError(f"a rollout of {name} is {held.state} already")
    now = controller.clock()
    draft = Rollout(
        name,
        "running",
        0,
        now,
        controller.flags.table.get(name).version,
        now,
        actor,
        plan,
        generation=held.generation if held else 0,
    )
    resolved = controller.plan_of(draft)
    first = resolved.live_bp(0)
    draft_flag = controller.flags.table.get(name)
    if draft_flag.basis_points != first:
        [flag] = await controller.flags.set_percentages(
            {name: first},
            by=actor,
            reason=f"rollout started: {reason}",
            expected={name: draft_flag.version},
        )
        draft = Rollout(
            name, "running", 0, now, flag.version, now, actor, plan, generation=draft.generation
        )
    started = draft if held is None else draft.next()
    await controller.records.put(started, held.generation if held else None)
    await controller.records.record(
        {
            "time": now,
            "experiment": name,
            "actor": actor,
            "state": "running",
            "transition": "started",
            "change": stage_change(resolved, 0),
            "stage": 0,
            "decision": "start",
            "reason": reason,
            "inputs": {"plan": plan},
        },
    )
    controller.forget(name)
    return started


@one_at_a_time
async def approve(
    controller: Acting, name: str, percentage: float | None, actor: str, reason: str
) -> Rollout:
    rollout = await controller.get(name)
    if rollout.state in FINISHED:  # one rule with promote: a finished rollout moves no more
        raise RolloutError(f"the rollout is {rollout.state}")
    plan = controller.plan_of(rollout)
    following = rollout.stage_index + 1
    if following >= len(plan.stages):
        raise RolloutError("no stage left to approve")
    wanted = plan.stages[following].percentage_bp
    if percentage is not None and round(percentage * 100) != wanted:
        raise RolloutError(f"the stage pending approval is {wanted / 100:g}%, not {percentage:g}%")
    # Ahead of time, only a stage that waits for a person; and once: an approval recorded
    # for a stage that needs none, or twice, is history that says what did not happen.
    if following in rollout.approvals:
        raise RolloutError(f"{wanted / 100:g}% is approved already")
    if not plan.stages[following].approval and rollout.state != "awaiting_approval":
        raise RolloutError(f"the next stage, {wanted / 100:g}%, needs no approval")
    updated = rollout.next(approvals=(*rollout.approvals, following))
    await controller.records.save(
        rollout, updated, None, actor, None, change=f"approved {wanted / 100:g}%", reason=reason
    )
    if rollout.state == "awaiting_approval":
        decision = await evaluate(controller, updated, plan, controller.clock())
        with changed_by_hand(name):
            if decision.verdict == "rollback":
                await moves.act(controller, updated, plan, decision, controller.clock(), Seen())
                return await controller.get(name)
            return await moves.promote_to(
                controller,
                updated,
                plan,
                following,
                decision,
                actor,
                f"approved by {actor}: {reason}",
            )
    return updated


@one_at_a_time
async def set_state(controller: Acting, name: str, action: str, actor: str, reason: str) -> Rollout:
    rollout = await controller.get(name)
    if action == "pause":
        if rollout.state not in ACTIVE:
            raise RolloutError(f"cannot pause a rollout that is {rollout.state}")
        updated = rollout.next(state="paused", reason=f"paused by {actor}: {reason}")
    elif action == "resume":
        if rollout.state not in ("paused", "escalated"):
            raise RolloutError(f"cannot resume a rollout that is {rollout.state}")
        flag = controller.flags.table.get(name)
        updated = rollout.next(
            state="running", flag_version=flag.version, reason=f"resumed by {actor}: {reason}"
        )
    elif action == "abort":
        if rollout.state in FINISHED:
            raise RolloutError(f"the rollout is {rollout.state} already")
        version = await _to_zero(controller, name, actor, f"aborted: {reason}")
        updated = rollout.next(
            state="aborted", flag_version=version, reason=f"aborted by {actor}: {reason}"
        )
    else:
        raise UnknownRollout(f"unknown action {shown(action)}")
    await controller.records.save(rollout, updated, None, actor, updated.state, reason=reason)
    controller.forget(name)
    return updated


async def _to_zero(controller: Acting, name: str, actor: str, reason: str) -> int:
    """The flag to 0% whatever version it is at now: abort is the safe direction, so a
    change by hand since the rollout last looked (its expected version is stale) is
    re-read and written over, compare-and-set on the version as it stands. Returns the
    flag's version once at 0%."""
    flag = controller.flags.table.get(name)
    for _ in range(ABORT_TRIES):
        if flag.basis_points == 0:
            return flag.version
        try:
            [written] = await controller.flags.set_percentages(
                {name: 0}, by=actor, reason=reason, expected={name: flag.version}
            )
            return written.version
        except VersionConflict as exc:
            flag = exc.current  # written meanwhile: once more on what is there now
    raise RolloutError(f"{name} kept changing while aborting; try again")


@one_at_a_time
async def promote(controller: Acting, name: str, actor: str, reason: str) -> Rollout:
    """A manual skip to the next stage (from the holdout: its release to 100%, the
    rollout completed), recorded as an override."""
    rollout = await controller.get(name)
    if rollout.state in FINISHED:
        raise RolloutError(f"the rollout is {rollout.state}")
    plan = controller.plan_of(rollout)
    following = rollout.stage_index + 1
    why = f"override by {actor}: {reason}"
    if following >= len(plan.stages) and not plan.holds_out(rollout.stage_index):
        raise RolloutError("the rollout is at its last stage")
    with changed_by_hand(name):
        if following >= len(plan.stages):
            return await moves.complete(controller, rollout, plan, None, actor, why)
        return await moves.promote_to(controller, rollout, plan, following, None, actor, why)


@one_at_a_time
async def set_incident(
    controller: Acting, name: str, open_: bool, description: str, actor: str
) -> Rollout:
    rollout = await controller.get(name)
    updated = rollout.next(incident=description if open_ else None)
    await controller.records.save(
        rollout,
        updated,
        None,
        actor,
        None,
        change="incident opened" if open_ else "incident closed",
        reason=description,
    )
    return updated
