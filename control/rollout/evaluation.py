"""A stage as the stores have it now, put to the gates: the statistics worker's read of its
phase, the sidecars' flag versions and breakers, what the controller remembers of the
rollout between ticks (`Seen`), all made into `StageInputs` for the pure `decide`
(control/rollout/gates.py).

Apart from the controller's actions: the control API asks for the same evaluation (a
decision now, Argo's and Flagger's hooks), and only here do the stores meet the gates.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from abgate.config import Config
from abgate.config.model import RolloutPlan
from abgate.control.measured import Read, Reads, phase_arms
from abgate.control.offload import Offload
from abgate.control.rollout.gates import Decision, StageInputs, decide
from abgate.control.rollout.reach import Units
from abgate.state.errors import StoreUnavailable
from abgate.state.flags import FlagStore
from abgate.state.rollouts import Rollout

_OPEN = {"open", "forced_open"}


@dataclass
class Seen:
    """What the controller keeps in memory per rollout between ticks."""

    decided_at: float = 0.0
    last: tuple[str, str] = ("", "")  # (verdict, kind) of the last recorded decision
    breaker_open_since: float | None = None
    decision: Decision | None = None
    # (phase, seconds into the stage, units per arm) readings of the current stage, thinned:
    # the rate of new users since half the stage's age (control/rollout/reach.py)
    readings: list[tuple[int, float, Units]] = field(default_factory=list)

    def earlier(
        self, phase: int, elapsed: float, now: tuple[float, float]
    ) -> tuple[float, Units] | None:
        """The reading nearest after half the stage's age, and this one remembered."""
        kept = [r for r in self.readings if r[0] == phase and r[1] < elapsed]
        found = next(((t, u) for _, t, u in kept if t >= elapsed / 2), None)
        kept.append((phase, elapsed, now))
        self.readings = kept[:-1:2] + kept[-1:] if len(kept) > 64 else kept
        return found


class Evaluated(Protocol):
    """What an evaluation reads of the rollout controller (controller.py): its config as
    reloaded, its flags and the statistics worker's reads."""

    config: Config
    flags: FlagStore
    reads: Reads
    offload: Offload


async def evaluate(
    controller: Evaluated,
    rollout: Rollout,
    plan: RolloutPlan,
    now: float,
    seen: Seen | None = None,
    load_test: bool | None = None,
) -> Decision:
    """The gates on the rollout's current stage, from the stores as they are now."""
    name = rollout.experiment
    experiment = controller.config.experiments[name]
    flag = controller.flags.table.get(name)
    try:  # the worker's read when it is no older than a tick, as the page shows it
        read = await controller.reads.read(name, max_age=plan.tick)
        stats_age = asyncio.get_running_loop().time() - read.at
    except StoreUnavailable:
        read = Read(0.0, [], {}, {}, {})
        stats_age = float("inf")
    names = (experiment.control.name, experiment.treatment.name)
    share = flag.basis_points / 10_000  # the stage, as the worker reads each phase
    stage = phase_arms(read.arms, read.sums, read.users, name, flag.phase, names, share)
    unconverged: list[str] = []
    open_now = False
    try:
        for instance in await controller.flags.instances():
            if instance.applied.get(name, flag.version) < flag.version:
                unconverged.append(f"{instance.id} at v{instance.applied.get(name)}")
            if instance.breakers.get(experiment.treatment.upstream) in _OPEN:
                open_now = True
    except StoreUnavailable:
        stats_age = float("inf")
    open_for = 0.0
    if seen is not None:
        if open_now:
            seen.breaker_open_since = seen.breaker_open_since or now
            open_for = now - seen.breaker_open_since
        else:
            seen.breaker_open_since = None
    elapsed = now - rollout.stage_started_at
    counts = (stage.srm.control[0], stage.srm.treatment[0])
    earlier = None if seen is None else seen.earlier(flag.phase, elapsed, counts)
    # Off the loop, in the statistics process (control/offload.py): a stage's first sizing
    # computes its crossing probabilities (about a second), which would stall the control
    # API and, in one process (tests, embedded), the proxy. `decide` is pure.
    return await controller.offload.run(
        decide,
        plan,
        experiment,
        StageInputs(
            now=now,
            stage_index=rollout.stage_index,
            stage_started_at=rollout.stage_started_at,
            percentage_bp=flag.basis_points,
            control=stage.control,
            treatment=stage.treatment,
            breaker_open_for=open_for if open_now else 0.0,
            incident=rollout.incident,
            unconverged=tuple(unconverged),
            stats_age=stats_age,
            load_test=load_test,
            units=stage.srm.units,
            srm=stage.srm,
            earlier_units=earlier,
        ),
    )
