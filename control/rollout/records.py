"""A rollout's writes: its state to the rollout store, an entry appended to its history,
the listeners told (the history store copies entries to PostgreSQL, the timeline marks
them), the gauges' copy updated at once.

Every change the controller, a stage's load test or a person makes is written here, in the
same shape, so the history reads as one record of who did what, at which stage, and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from abgate.config.model import RolloutPlan
from abgate.control.rollout.gates import Decision
from abgate.state.rollouts import Rollout, RolloutStore

ACTOR = "rollout-controller"  # who the history names for the controller's own actions


def stage_change(plan: RolloutPlan, index: int) -> str:
    """How the history names a move to stage `index`: its live percentage, and the
    holdout's control share where there is one (never "100%" while control still serves)."""
    change = f"stage {index}: {plan.live_bp(index) / 100:g}%"
    if plan.holdout is not None and plan.holds_out(index):
        change += f" (holdout: {plan.holdout.percentage_bp / 100:g}% kept on control)"
    return change


class RolloutRecords:
    """The rollout store written, the history appended, the listeners told."""

    def __init__(self, store: RolloutStore, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        # Called with every history entry (the history store copies them to PostgreSQL).
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.current: list[Rollout] = []  # as of the last tick and the writes since

    async def save(
        self,
        old: Rollout,
        new: Rollout,
        decision: Decision | None,
        actor: str,
        transition: str | None,
        *,
        record: bool = True,
        change: str | None = None,
        reason: str | None = None,
    ) -> None:
        """`new` written over `old`, and its history entry when it is worth one (`record`,
        or any change of state)."""
        await self.put(new, old.generation)
        if record or transition is not None:
            await self.record(
                {
                    "time": self.clock(),
                    "experiment": new.experiment,
                    "actor": actor,
                    "state": new.state,
                    "transition": transition,
                    "change": change,
                    "stage": new.stage_index,
                    "decision": decision.verdict if decision else new.decision,
                    "reason": reason or new.reason,
                    "inputs": decision.as_json() if decision else None,
                },
            )

    async def put(self, rollout: Rollout, generation: int | None) -> None:
        """Written compare-and-set on `generation` (None: a new rollout)."""
        await self.store.put(rollout, generation)
        self.remember(rollout)

    def remember(self, rollout: Rollout) -> None:
        """The gauges show a write at once, not at the next tick's read."""
        self.current = [r for r in self.current if r.experiment != rollout.experiment] + [rollout]

    async def record(self, event: dict[str, Any]) -> None:
        """Append to the rollout's history (and tell the listeners)."""
        await self.store.append(event["experiment"], event)
        self.tell(event)

    def tell(self, event: dict[str, Any]) -> None:
        """Tell the listeners (the history store's writer) of an event now written."""
        for listener in self.listeners:
            listener(event)
