"""The moves a rollout makes: a decision acted on (roll back, complete, promote or wait for
a person's approval, hold or escalate), a stage promoted to, the holdout released, a flag
changed by hand adopted or paused for. Each writes the flag compare-and-set on the version
the rollout expects, then the rollout and its history entry (records.py).

The controller's tick and a person's actions (actions.py) both move a rollout, so the moves
are functions of what they use of the controller (`Moving`), for either to call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from abgate.config.model import RolloutPlan
from abgate.control.rollout.evaluation import Seen
from abgate.control.rollout.gates import Decision
from abgate.control.rollout.records import ACTOR, RolloutRecords, stage_change
from abgate.state.flags import FlagStore
from abgate.state.rollouts import Rollout


class Moving(Protocol):
    """What the moves read and do of the rollout controller (controller.py): declared here
    so that the two modules do not import each other."""

    flags: FlagStore
    records: RolloutRecords
    clock: Callable[[], float]
    decisions: dict[tuple[str, str], int]  # (decision, kind) -> count

    def forget(self, name: str) -> None: ...


def held_state(state: str, kind: str, overdue: bool) -> str:
    """The state a hold leaves a rollout in: a running stage that could not decide for
    max_hold, or that cannot reach its users by then at the observed rate (kind
    "cannot_finish", control/rollout/reach.py: a person is told now, not after max_hold),
    is escalated. An escalated stage keeps running: it is promoted if it does finish."""
    if state == "running" and kind != "bake" and (overdue or kind == "cannot_finish"):
        return "escalated"
    return state


async def act(
    controller: Moving,
    rollout: Rollout,
    plan: RolloutPlan,
    decision: Decision,
    now: float,
    seen: Seen,
) -> None:
    """What a decision does: roll back, complete, promote (or wait for approval), hold."""
    name = rollout.experiment
    key = (decision.verdict, decision.kind)
    controller.decisions[key] = controller.decisions.get(key, 0) + 1
    stage = plan.stages[rollout.stage_index]
    if decision.verdict == "rollback":
        await set_percentage(controller, rollout, 0, decision.reason, ACTOR)
        flag = controller.flags.table.get(name)
        updated = rollout.next(
            state="rolled_back",
            decision="rollback",
            reason=decision.reason,
            flag_version=flag.version,
            incident=rollout.incident or decision.reason,
            eta_seconds=None,
        )
        await controller.records.save(rollout, updated, decision, ACTOR, "rolled_back")
        return
    if decision.verdict == "complete":
        await complete(controller, rollout, plan, decision, ACTOR, decision.reason)
        return
    if decision.verdict == "continue":
        following = rollout.stage_index + 1
        if plan.stages[following].approval and following not in rollout.approvals:
            reason = (
                f"stage {stage.percentage_bp / 100:g}% shown safe; waiting for "
                f"approval of {plan.stages[following].percentage_bp / 100:g}%"
                + (" (with its holdout first)" if plan.holds_out(following) else "")
            )
            updated = rollout.next(
                state="awaiting_approval", decision="continue", reason=reason, eta_seconds=None
            )
            changed = rollout.state != "awaiting_approval"
            # Recorded when it changes, not at every tick while the person is away.
            await controller.records.save(
                rollout,
                updated,
                decision,
                ACTOR,
                "awaiting_approval" if changed else None,
                record=changed or key != seen.last,
            )
            seen.last = key
            return
        await promote_to(controller, rollout, plan, following, decision, ACTOR, decision.reason)
        return
    # hold
    # Awaiting approval stays so (rules 1-2 keep running); a running stage that cannot
    # decide for max_hold goes to a person.
    # A holdout's bake is no hold: max_hold counts from its end.
    waited = now - rollout.stage_started_at
    if plan.holds_out(rollout.stage_index):
        waited -= plan.bake
    state = held_state(rollout.state, decision.kind, waited > plan.max_hold)
    changed = state != rollout.state
    updated = rollout.next(
        state=state, decision="hold", reason=decision.reason, eta_seconds=decision.eta_seconds
    )
    await controller.records.save(
        rollout, updated, decision, ACTOR, state if changed else None, record=key != seen.last
    )
    seen.last = key


async def complete(
    controller: Moving,
    rollout: Rollout,
    plan: RolloutPlan,
    decision: Decision | None,
    actor: str,
    reason: str,
) -> Rollout:
    """Completed; from the holdout, once it is released to 100%."""
    version, change = rollout.flag_version, None
    if plan.holds_out(rollout.stage_index):
        version = await set_percentage(controller, rollout, 10_000, reason, actor)
        change = "holdout released: 100%"
    updated = rollout.next(
        state="completed",
        decision="complete",
        reason=reason,
        flag_version=version,
        eta_seconds=None,
    )
    await controller.records.save(rollout, updated, decision, actor, "completed", change=change)
    return updated


async def promote_to(
    controller: Moving,
    rollout: Rollout,
    plan: RolloutPlan,
    index: int,
    decision: Decision | None,
    actor: str,
    reason: str,
) -> Rollout:
    """A move to stage `index`: its live percentage written, its clock started afresh."""
    percentage = plan.live_bp(index)
    flag = await set_percentage(controller, rollout, percentage, reason, actor)
    updated = rollout.next(
        state="running",
        stage_index=index,
        stage_started_at=controller.clock(),
        flag_version=flag,
        decision="continue",
        reason=reason,
        eta_seconds=None,
    )
    await controller.records.save(
        rollout,
        updated,
        decision,
        actor,
        "running",
        change=stage_change(plan, index),
    )
    controller.forget(rollout.experiment)
    return updated


async def set_percentage(
    controller: Moving, rollout: Rollout, basis_points: int, reason: str, actor: str
) -> int:
    """Compare-and-set on the version the rollout expects; the new version."""
    [flag] = await controller.flags.set_percentages(
        {rollout.experiment: basis_points},
        by=actor,
        reason=reason,
        expected={rollout.experiment: rollout.flag_version},
    )
    return flag.version


async def pause_for_change(
    controller: Moving, rollout: Rollout, plan: RolloutPlan, by: str, why: str, percentage: float
) -> None:
    """The flag is not at the version the rollout wrote: paused, naming who changed it;
    or, where it is the controller's own write that a crash kept from being recorded,
    adopted."""
    if (
        by == ACTOR
        and rollout.stage_index + 1 < len(plan.stages)
        and plan.live_bp(rollout.stage_index + 1) == round(percentage * 100)
    ):
        # Our own promotion, written before a crash kept us from recording it: adopt it
        # (never repeat it, never skip a stage).
        await _promote_adopted(controller, rollout, plan)
        return
    if by == ACTOR and plan.holds_out(rollout.stage_index) and percentage == 100:
        # Our own release of the holdout, written before a crash kept us from recording
        # the completion: adopt it.
        updated = rollout.next(
            state="completed",
            decision="complete",
            reason=f"holdout released before a restart ({why})",
            flag_version=controller.flags.table.get(rollout.experiment).version,
        )
        await controller.records.save(
            rollout, updated, None, ACTOR, "completed", change="recovered"
        )
        return
    said = f" ({why})" if why else ""  # a write without a reason: no empty "()"
    reason = f"changed by {by} to {percentage:g}%{said}; paused, nothing overwritten"
    updated = rollout.next(
        state="paused",
        decision="hold",
        reason=reason,
        flag_version=controller.flags.table.get(rollout.experiment).version,
    )
    await controller.records.save(rollout, updated, None, ACTOR, "paused")


async def _promote_adopted(controller: Moving, rollout: Rollout, plan: RolloutPlan) -> None:
    flag = controller.flags.table.get(rollout.experiment)
    updated = rollout.next(
        state="running",
        stage_index=rollout.stage_index + 1,
        stage_started_at=flag.updated_at,
        flag_version=flag.version,
        reason="promotion recovered after a restart",
    )
    await controller.records.save(rollout, updated, None, ACTOR, "running", change="recovered")
