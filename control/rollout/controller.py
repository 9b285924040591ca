"""The rollout controller: an owned task that, each tick, reads a rollout's stage statistics,
asks the gates (control/rollout/gates.py) and acts: hold, promote, wait for approval,
escalate, roll back, complete. Every action and every change of decision is appended to
the rollout's history with its inputs.

Flag writes are compare-and-set on the version the rollout expects, so a person changing
the percentage mid-rollout is seen (the rollout pauses, naming who) instead of overwritten.
State lives in the rollout store (state file or Redis), so a restart resumes the same stage
on the same clock; with several control processes on one Redis, a lease picks the one that
acts. One rollout that cannot be evaluated never stops the others: logged once, counted.

Never unattended: a rollout the store lost (Redis restarted empty) is put back before the
controller acts again (control/rollout/recovery.py).

Here: the loop, its lease and a tick. Beside it, in control/rollout/: evaluation.py (a
stage read from the stores and put to the gates), moves.py (what a decision does),
load_tests.py (a stage's load test), records.py (every write and history entry),
actions.py (a person's actions), errors.py, gauges.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import get_args

from prometheus_client.core import Metric

from abgate.config import Config
from abgate.config.errors import AbgateError
from abgate.config.fields import shown
from abgate.config.model import RolloutPlan
from abgate.config.parse_rollout import parse_plan
from abgate.control.measured import Reads
from abgate.control.offload import IN_THREAD, Offload
from abgate.control.rollout import moves
from abgate.control.rollout.errors import NoRolloutPlan, UnknownRollout
from abgate.control.rollout.evaluation import Seen, evaluate
from abgate.control.rollout.gates import Decision
from abgate.control.rollout.gauges import rollout_families
from abgate.control.rollout.load_tests import StageLoadTests
from abgate.control.rollout.records import ACTOR, RolloutRecords
from abgate.control.rollout.recovery import recover
from abgate.state.errors import StoreUnavailable
from abgate.state.flags import FlagStore, VersionConflict
from abgate.state.measurements import MeasurementStore
from abgate.state.rollouts import (
    ACTIVE,
    Lease,
    Rollout,
    RolloutConflict,
    RolloutStatus,
    RolloutStore,
)

log = logging.getLogger("abgate.rollout")
LOOP_INTERVAL = 0.5  # how often the loop wakes; each rollout decides every plan.tick
STATES: tuple[str, ...] = get_args(RolloutStatus)


class RolloutController:
    actor = ACTOR  # who the history names for the controller's own actions

    def __init__(
        self,
        config: Config,
        flags: FlagStore,
        rollouts: RolloutStore,
        measurements: MeasurementStore,
        *,
        lease: Lease | None = None,
        clock: Callable[[], float] = time.time,
        proxy_url: str | None = None,
        reads: Reads | None = None,
        offload: Offload = IN_THREAD,
    ) -> None:
        self.config = config
        self.reads = reads or Reads(measurements)  # the statistics worker's, when it runs
        self.offload = offload  # where the gates decide: the statistics worker's process
        self.proxy_url = proxy_url  # where a stage's load test sends its requests
        self.flags = flags
        self.rollouts = rollouts
        self.records = RolloutRecords(rollouts, clock)
        self.listeners = self.records.listeners  # told of every history entry
        self.load_tests = StageLoadTests(self.records)
        self.lease = lease
        self.clock = clock
        self._seen: dict[str, Seen] = {}
        self.decisions: dict[tuple[str, str], int] = {}  # (decision, kind) -> count
        self.errors: dict[str, int] = {}
        self.failing: dict[str, str] = {}
        self.acting = lease is None
        self.starting = asyncio.Lock()  # a start, against the orphan check (recovery.py)
        # One decision at a time in this process: the loop's tick on a rollout and a
        # person's action (approve, pause, promote...) would otherwise both read one version
        # and the second to write would fail with a conflict (a demo's approval did).
        self.deciding = asyncio.Lock()

    @property
    def current(self) -> list[Rollout]:
        """The rollouts as of the last tick and the writes since (the gauges, the timeline)."""
        return self.records.current

    # -- plans -----------------------------------------------------------------------------

    def plan_of(self, rollout: Rollout) -> RolloutPlan:
        experiment = self.config.experiments.get(rollout.experiment)
        if experiment is None:
            raise UnknownRollout(f"experiment {shown(rollout.experiment)} is not in the config")
        if rollout.plan is not None:
            return parse_plan(rollout.plan, experiment.metrics, "rollout plan")
        if experiment.rollout is None:
            raise NoRolloutPlan(f"experiment {shown(rollout.experiment)} has no rollout plan")
        return experiment.rollout

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                await self.tick_all()
                await asyncio.sleep(LOOP_INTERVAL)
        finally:  # the load tests this loop started end with it
            await self.load_tests.stop()

    async def tick_all(self) -> None:
        if self.lease is not None:
            self.acting = await self.lease.hold()
            if not self.acting:
                return
        try:
            rollouts, lost = await recover(self, await self.rollouts.all())
        except (StoreUnavailable, RolloutConflict) as exc:
            self._failed("*", exc)  # hold: nothing acts on a store that cannot be read
            return
        self.records.current = rollouts
        self.failing.pop("*", None)
        for rollout in rollouts:
            if rollout.experiment in lost:
                continue  # put back this tick: it acts from the next one
            if rollout.state not in ACTIVE:
                continue
            try:
                async with self.deciding:
                    await self.tick(rollout)
            except (RolloutConflict, VersionConflict):
                continue  # someone acted meanwhile: the next tick reads it afresh
            except Exception as exc:  # one rollout must never stop the others
                self._failed(rollout.experiment, exc)
            else:
                self.failing.pop(rollout.experiment, None)

    def _failed(self, name: str, exc: Exception) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1
        message = f"{type(exc).__name__}: {exc}"
        if self.failing.get(name) != message:
            # abgate's own failures say what is wrong in words; a bug shows its traceback
            trace = None if isinstance(exc, AbgateError) else exc
            log.error("rollout %s: tick failed: %s", name, message, exc_info=trace)
        self.failing[name] = message

    async def tick(self, rollout: Rollout, *, force: bool = False) -> Decision | None:
        name = rollout.experiment
        plan = self.plan_of(rollout)
        now = self.clock()
        seen = self._seen.setdefault(name, Seen())
        if not force and now - seen.decided_at < plan.tick:
            return seen.decision
        seen.decided_at = now
        flag = self.flags.table.get(name)
        if flag.version != rollout.flag_version:
            await moves.pause_for_change(
                self, rollout, plan, flag.updated_by, flag.reason, flag.percentage
            )
            return None
        url = self.proxy_url or self.config.proxy.listen.url
        load_test, rollout = await self.load_tests.check(rollout, plan, url)
        if load_test is None:
            return None  # it failed: escalated until a person resumes
        decision = await evaluate(self, rollout, plan, now, seen, load_test)
        seen.decision = decision
        await moves.act(self, rollout, plan, decision, now, seen)
        return decision

    # -- for people's actions (control/rollout/actions.py) and the API ----------------------

    async def get(self, name: str) -> Rollout:
        rollout = await self.rollouts.get(name)
        if rollout is None:  # lost by the store? put back first (a person asks now)
            rollouts, _ = await recover(self, await self.rollouts.all())
            rollout = next((r for r in rollouts if r.experiment == name), None)
        if rollout is None:
            raise UnknownRollout(f"no rollout for {shown(name)}; start one first")
        return rollout

    def forget(self, name: str) -> None:
        """What the loop remembers of a rollout between ticks: gone (it starts afresh)."""
        self._seen.pop(name, None)

    def last_decision(self, name: str) -> Decision | None:
        seen = self._seen.get(name)
        return seen.decision if seen is not None else None

    # -- Prometheus --------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        decisions = {name: seen.decision for name, seen in self._seen.items()}
        yield from rollout_families(
            self.current, self.plan_of, decisions, self.decisions, self.errors, STATES
        )
