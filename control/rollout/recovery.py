"""Never unattended: what the rollout controller does when its store lost state.

Redis restarted empty takes the rollouts with it. The store keeps a copy of each rollout it
has seen (in memory and in the state file, state/rollouts.py); before the controller acts
again, and before a person's request is answered, every rollout the store lacks is put back
from that copy with its stage's clock started again (the stage's measurements went with
Redis, so no promotion rests on data that is gone), and the history says so. A flag that a
rollout moved and whose rollout no copy holds any more (a standby that never read it took
over) gets an escalated rollout at the stage its percentage is: a person resumes or aborts
it, and the flag is never left at a partial percentage with no gates and no rollback. That
check runs only once the store says it lost everything: a rollout being started writes its
flag a moment before its state, and must not look orphaned meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from abgate.config import Config
from abgate.control.rollout.records import RolloutRecords
from abgate.state.flags import FlagStore
from abgate.state.rollouts import FINISHED, Rollout, RolloutStore

log = logging.getLogger("abgate.rollout")
# How a rollout's flag writes by people begin (start, override, approval): with the
# controller's own, what marks a flag as a rollout's.
ROLLOUT_WRITES = ("rollout started: ", "override by ", "approved by ")


class Recovering(Protocol):
    """What recovery reads and does of the rollout controller (controller.py), which calls
    it: declared here so that the two modules do not import each other."""

    config: Config
    flags: FlagStore
    rollouts: RolloutStore
    records: RolloutRecords
    clock: Callable[[], float]
    starting: asyncio.Lock  # held by a start, against the orphan check

    @property
    def actor(self) -> str: ...

    def forget(self, name: str) -> None: ...


async def recover(
    controller: Recovering, rollouts: list[Rollout]
) -> tuple[list[Rollout], set[str]]:
    """`rollouts` as the store has them, with what it had lost put back (and the names
    of those), and the flags left without a rollout escalated."""
    restored = []
    for copy in controller.rollouts.lost(rollouts):
        # Put back with its stage starting again: the stage's measurements went with it.
        rollout = copy if copy.state in FINISHED else copy.next(
            stage_started_at=controller.clock(),
            eta_seconds=None,
            reason="restored after the store lost it (Redis restarted empty?); the "
            "stage's measurements were lost with it, so its clock starts again",
        )  # fmt: skip
        event = _event(controller, rollout, "restored")
        if await controller.rollouts.restore(rollout, event):
            controller.forget(rollout.experiment)
            controller.records.tell(event)
            restored.append(rollout)
    rollouts = rollouts + restored
    # Only once the store says it lost everything, and never beside a start in this process
    # (a rollout being started has its flag written a moment before its state).
    if await controller.rollouts.emptied():
        async with controller.starting:
            known = {r.experiment for r in await controller.rollouts.all()}
            rollouts += await _orphans(controller, known | {r.experiment for r in rollouts})
    return rollouts, {r.experiment for r in restored}


async def _orphans(controller: Recovering, known: set[str]) -> list[Rollout]:
    """Flags a rollout moved whose rollout no store or copy holds any more: each gets an
    escalated rollout at the stage its percentage is, for a person to resume or abort."""
    found = []
    for name, experiment in controller.config.experiments.items():
        if name in known or name not in controller.flags.table or experiment.rollout is None:
            continue
        flag = controller.flags.table.get(name)
        by_rollout = flag.updated_by == controller.actor or flag.reason.startswith(ROLLOUT_WRITES)
        if not by_rollout or not 0 < flag.basis_points < 10_000:
            continue
        plan = experiment.rollout
        index = max(
            (i for i in range(len(plan.stages)) if plan.live_bp(i) <= flag.basis_points),
            default=0,
        )
        now = controller.clock()
        reason = (
            f"the rollout's state was lost (Redis restarted empty, no copy left) with "
            f"the flag at {flag.percentage:g}%; escalated: resume or abort"
        )
        rollout = Rollout(
            name, "escalated", index, now, flag.version, now, controller.actor, decision="hold",
            reason=reason,
        )  # fmt: skip
        event = _event(controller, rollout, "escalated")
        if not await controller.rollouts.restore(rollout, event):
            continue  # another process was first
        controller.records.tell(event)
        log.error("rollout %s: %s", name, reason)
        found.append(rollout)
    return found


def _event(controller: Recovering, rollout: Rollout, transition: str) -> dict[str, Any]:
    """The history entry a put-back rollout is written with, in the same write."""
    return {
        "time": controller.clock(),
        "experiment": rollout.experiment,
        "actor": controller.actor,
        "state": rollout.state,
        "transition": transition,
        "change": None,
        "stage": rollout.stage_index,
        "decision": "hold",
        "reason": rollout.reason,
        "inputs": None,
    }
