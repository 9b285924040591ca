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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar, get_args

from prometheus_client.core import Metric

from abgate.config import Config
from abgate.config.errors import AbgateError
from abgate.config.model import RolloutPlan
from abgate.config.parse_rollout import parse_plan
from abgate.control.load_test import LoadPlan, LoadResult, run_load
from abgate.control.measured import Read, Reads, phase_arms
from abgate.control.rollout.gates import Decision, StageInputs, decide
from abgate.control.rollout.gauges import rollout_families
from abgate.control.rollout.reach import Units
from abgate.control.rollout.recovery import recover
from abgate.state.errors import StoreUnavailable
from abgate.state.flags import FlagStore, VersionConflict
from abgate.state.measurements import MeasurementStore
from abgate.state.rollouts import (
    ACTIVE,
    FINISHED,
    Lease,
    Rollout,
    RolloutConflict,
    RolloutStatus,
    RolloutStore,
)
from abgate.state.tasks import stop_tasks

log = logging.getLogger("abgate.rollout")
ACTOR = "rollout-controller"
LOOP_INTERVAL = 0.5  # how often the loop wakes; each rollout decides every plan.tick
STATES: tuple[str, ...] = get_args(RolloutStatus)
P = ParamSpec("P")
R = TypeVar("R")
_OPEN = {"open", "forced_open"}


ABORT_TRIES = 5  # re-reads of a flag that keeps changing while an abort writes it


@contextlib.contextmanager
def _changed_by_hand(name: str) -> Iterator[None]:
    """A person's promotion that meets a flag changed by hand since the rollout last looked:
    a clear 409 (resume first, which adopts the new version), not an internal error."""
    try:
        yield
    except VersionConflict as exc:
        current = exc.current
        raise RolloutError(
            f"{name} was changed by {current.updated_by} to {current.percentage:g}% "
            f"(version {current.version}) since the rollout last saw it (version "
            f"{exc.expected}); nothing was changed: resume the rollout first, or abort it"
        ) from None


def stage_change(plan: RolloutPlan, index: int) -> str:
    """How the history names a move to stage `index`: its live percentage, and the
    holdout's control share where there is one (never "100%" while control still serves)."""
    change = f"stage {index}: {plan.live_bp(index) / 100:g}%"
    if plan.holdout is not None and plan.holds_out(index):
        change += f" (holdout: {plan.holdout.percentage_bp / 100:g}% kept on control)"
    return change


class RolloutError(AbgateError):
    """A rollout action that cannot be done now (the API answers 409)."""


class UnknownRollout(RolloutError):
    """No such experiment, rollout or action (404)."""


class NoRolloutPlan(RolloutError):
    """The experiment has no rollout plan to run (400)."""


@dataclass
class _Seen:
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


def held_state(state: str, kind: str, overdue: bool) -> str:
    """The state a hold leaves a rollout in: a running stage that could not decide for
    max_hold, or that cannot reach its users by then at the observed rate (kind
    "cannot_finish", control/rollout/reach.py: a person is told now, not after max_hold),
    is escalated. An escalated stage keeps running: it is promoted if it does finish."""
    if state == "running" and kind != "bake" and (overdue or kind == "cannot_finish"):
        return "escalated"
    return state


def _one_at_a_time(
    action: Callable[Concatenate[RolloutController, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[RolloutController, P], Coroutine[Any, Any, R]]:
    """A person's action on a rollout, taken while the loop is not deciding on one."""

    @functools.wraps(action)
    async def one_at_a_time(
        controller: RolloutController, /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        async with controller.deciding:
            return await action(controller, *args, **kwargs)

    return one_at_a_time


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
    ) -> None:
        self.config = config
        self.reads = reads or Reads(measurements)  # the statistics worker's, when it runs
        self.proxy_url = proxy_url  # where a stage's load test sends its requests
        self._load_tests: dict[tuple[str, int], asyncio.Task[LoadResult]] = {}
        self.flags = flags
        self.rollouts = rollouts
        self.lease = lease
        self.clock = clock
        self._seen: dict[str, _Seen] = {}
        self.decisions: dict[tuple[str, str], int] = {}  # (decision, kind) -> count
        self.errors: dict[str, int] = {}
        self.failing: dict[str, str] = {}
        self.acting = lease is None
        self.current: list[Rollout] = []  # as of the last tick, for the gauges
        # Called with every history entry (the history store copies them to PostgreSQL).
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.starting = asyncio.Lock()  # a start, against the orphan check (recovery.py)
        # One decision at a time in this process: the loop's tick on a rollout and a
        # person's action (approve, pause, promote...) would otherwise both read one version
        # and the second to write would fail with a conflict (a demo's approval did).
        self.deciding = asyncio.Lock()

    # -- plans -----------------------------------------------------------------------------

    def plan_of(self, rollout: Rollout) -> RolloutPlan:
        experiment = self.config.experiments.get(rollout.experiment)
        if experiment is None:
            raise UnknownRollout(f"experiment {rollout.experiment!r} is not in the config")
        if rollout.plan is not None:
            return parse_plan(rollout.plan, experiment.metrics, "rollout plan")
        if experiment.rollout is None:
            raise NoRolloutPlan(f"experiment {rollout.experiment!r} has no rollout plan")
        return experiment.rollout

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                await self.tick_all()
                await asyncio.sleep(LOOP_INTERVAL)
        finally:  # the load tests this loop started end with it
            await stop_tasks(list(self._load_tests.values()))

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
        self.current = rollouts
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
            log.error("rollout %s: tick failed: %s", name, message, exc_info=exc)
        self.failing[name] = message

    async def tick(self, rollout: Rollout, *, force: bool = False) -> Decision | None:
        name = rollout.experiment
        plan = self.plan_of(rollout)
        now = self.clock()
        seen = self._seen.setdefault(name, _Seen())
        if not force and now - seen.decided_at < plan.tick:
            return seen.decision
        seen.decided_at = now
        flag = self.flags.table.get(name)
        if flag.version != rollout.flag_version:
            await self._pause_for_change(
                rollout, plan, flag.updated_by, flag.reason, flag.percentage
            )
            return None
        load_test, rollout = await self._load_test(rollout, plan)
        if load_test is None:
            return None  # it failed: escalated until a person resumes
        decision = await self.evaluate(rollout, plan, now, seen, load_test)
        seen.decision = decision
        await self._act(rollout, plan, decision, now, seen)
        return decision

    async def _load_test(self, rollout: Rollout, plan: RolloutPlan) -> tuple[bool | None, Rollout]:
        """The stage's load test and the rollout as it now stands: True passed or none asked,
        False running; None: it failed (the rollout is escalated with its numbers and waits
        for a person; `resume` runs it again). Started once per stage, as a task."""
        stage = plan.stages[rollout.stage_index]
        if stage.load_test is None or rollout.stage_index in rollout.load_tests:
            return True, rollout
        if rollout.state == "escalated" and rollout.reason.startswith("load test"):
            return None, rollout
        key = (rollout.experiment, rollout.stage_index)
        task = self._load_tests.get(key)
        if task is None:
            test = stage.load_test
            url = self.proxy_url or self.config.proxy.listen.url
            self._load_tests[key] = asyncio.create_task(
                run_load(
                    LoadPlan(
                        url,
                        requests_per_second=test.requests_per_second,
                        duration=test.duration,
                        p95_max=test.p95_max,
                    )
                ),
                name=f"abgate-load-test-{rollout.experiment}",
            )
            return False, rollout
        if not task.done():
            return False, rollout
        del self._load_tests[key]
        result = task.result()
        summary = result.as_json()
        passed = result.passed
        reason = (
            f"load test at {stage.percentage_bp / 100:g}% "
            f"{'passed' if passed else 'failed'}: p95 {summary['latency_ms']['p95']} ms "
            f"(max {stage.load_test.p95_max * 1000:g}), "
            f"{summary['failed_requests']} failed of {summary['sent']}"
        )
        if passed:
            updated = rollout.next(
                load_tests=(*rollout.load_tests, rollout.stage_index), reason=reason
            )
        else:
            updated = rollout.next(state="escalated", decision="hold", reason=reason)
        await self.rollouts.put(updated, rollout.generation)
        self._remember(updated)
        await self.record(
            {
                "time": self.clock(),
                "experiment": rollout.experiment,
                "actor": ACTOR,
                "state": updated.state,
                "transition": None if passed else "escalated",
                "change": "load test passed" if passed else "load test failed",
                "stage": rollout.stage_index,
                "decision": "load_test",
                "reason": reason,
                "inputs": summary,
            }
        )
        return (True if passed else None), updated

    async def evaluate(
        self,
        rollout: Rollout,
        plan: RolloutPlan,
        now: float,
        seen: _Seen | None = None,
        load_test: bool | None = None,
    ) -> Decision:
        """The gates on the rollout's current stage, from the stores as they are now."""
        name = rollout.experiment
        experiment = self.config.experiments[name]
        flag = self.flags.table.get(name)
        try:  # the worker's read when it is no older than a tick, as the page shows it
            read = await self.reads.read(name, max_age=plan.tick)
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
            for instance in await self.flags.instances():
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
        return decide(
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

    async def _act(
        self, rollout: Rollout, plan: RolloutPlan, decision: Decision, now: float, seen: _Seen
    ) -> None:
        name = rollout.experiment
        key = (decision.verdict, decision.kind)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        stage = plan.stages[rollout.stage_index]
        if decision.verdict == "rollback":
            await self._set_percentage(rollout, 0, decision.reason, ACTOR)
            flag = self.flags.table.get(name)
            updated = rollout.next(
                state="rolled_back",
                decision="rollback",
                reason=decision.reason,
                flag_version=flag.version,
                incident=rollout.incident or decision.reason,
                eta_seconds=None,
            )
            await self._save(rollout, updated, decision, ACTOR, "rolled_back")
            return
        if decision.verdict == "complete":
            await self._complete(rollout, plan, decision, ACTOR, decision.reason)
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
                await self._save(
                    rollout,
                    updated,
                    decision,
                    ACTOR,
                    "awaiting_approval" if changed else None,
                    record=changed or key != seen.last,
                )
                seen.last = key
                return
            await self._promote(rollout, plan, following, decision, ACTOR, decision.reason)
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
        await self._save(
            rollout, updated, decision, ACTOR, state if changed else None, record=key != seen.last
        )
        seen.last = key

    async def _complete(
        self,
        rollout: Rollout,
        plan: RolloutPlan,
        decision: Decision | None,
        actor: str,
        reason: str,
    ) -> Rollout:
        """Completed; from the holdout, once it is released to 100%."""
        version, change = rollout.flag_version, None
        if plan.holds_out(rollout.stage_index):
            version = await self._set_percentage(rollout, 10_000, reason, actor)
            change = "holdout released: 100%"
        updated = rollout.next(
            state="completed",
            decision="complete",
            reason=reason,
            flag_version=version,
            eta_seconds=None,
        )
        await self._save(rollout, updated, decision, actor, "completed", change=change)
        return updated

    async def _promote(
        self,
        rollout: Rollout,
        plan: RolloutPlan,
        index: int,
        decision: Decision | None,
        actor: str,
        reason: str,
    ) -> Rollout:
        percentage = plan.live_bp(index)
        flag = await self._set_percentage(rollout, percentage, reason, actor)
        updated = rollout.next(
            state="running",
            stage_index=index,
            stage_started_at=self.clock(),
            flag_version=flag,
            decision="continue",
            reason=reason,
            eta_seconds=None,
        )
        await self._save(
            rollout,
            updated,
            decision,
            actor,
            "running",
            change=stage_change(plan, index),
        )
        self._seen.pop(rollout.experiment, None)
        return updated

    async def _set_percentage(
        self, rollout: Rollout, basis_points: int, reason: str, actor: str
    ) -> int:
        """Compare-and-set on the version the rollout expects; the new version."""
        [flag] = await self.flags.set_percentages(
            {rollout.experiment: basis_points},
            by=actor,
            reason=reason,
            expected={rollout.experiment: rollout.flag_version},
        )
        return flag.version

    async def _pause_for_change(
        self, rollout: Rollout, plan: RolloutPlan, by: str, why: str, percentage: float
    ) -> None:
        if (
            by == ACTOR
            and rollout.stage_index + 1 < len(plan.stages)
            and plan.live_bp(rollout.stage_index + 1) == round(percentage * 100)
        ):
            # Our own promotion, written before a crash kept us from recording it: adopt it
            # (never repeat it, never skip a stage).
            await self._promote_adopted(rollout, plan)
            return
        if by == ACTOR and plan.holds_out(rollout.stage_index) and percentage == 100:
            # Our own release of the holdout, written before a crash kept us from recording
            # the completion: adopt it.
            updated = rollout.next(
                state="completed",
                decision="complete",
                reason=f"holdout released before a restart ({why})",
                flag_version=self.flags.table.get(rollout.experiment).version,
            )
            await self._save(rollout, updated, None, ACTOR, "completed", change="recovered")
            return
        reason = f"changed by {by} to {percentage:g}% ({why}); paused, nothing overwritten"
        updated = rollout.next(
            state="paused",
            decision="hold",
            reason=reason,
            flag_version=self.flags.table.get(rollout.experiment).version,
        )
        await self._save(rollout, updated, None, ACTOR, "paused")

    async def _promote_adopted(self, rollout: Rollout, plan: RolloutPlan) -> None:
        flag = self.flags.table.get(rollout.experiment)
        updated = rollout.next(
            state="running",
            stage_index=rollout.stage_index + 1,
            stage_started_at=flag.updated_at,
            flag_version=flag.version,
            reason="promotion recovered after a restart",
        )
        await self._save(rollout, updated, None, ACTOR, "running", change="recovered")

    async def _save(
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
        await self.rollouts.put(new, old.generation)
        self._remember(new)
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

    def _remember(self, rollout: Rollout) -> None:
        """The gauges show a write at once, not at the next tick's read."""
        self.current = [r for r in self.current if r.experiment != rollout.experiment] + [rollout]

    async def record(self, event: dict[str, Any]) -> None:
        """Append to the rollout's history (and tell the listeners)."""
        await self.rollouts.append(event["experiment"], event)
        self.tell(event)

    def tell(self, event: dict[str, Any]) -> None:
        """Tell the listeners (the history store's writer) of an event now written."""
        for listener in self.listeners:
            listener(event)

    # -- actions from people -------------------------------------------------------------

    async def get(self, name: str) -> Rollout:
        rollout = await self.rollouts.get(name)
        if rollout is None:  # lost by the store? put back first (a person asks now)
            rollouts, _ = await recover(self, await self.rollouts.all())
            rollout = next((r for r in rollouts if r.experiment == name), None)
        if rollout is None:
            raise UnknownRollout(f"no rollout for {name!r}; start one first")
        return rollout

    async def start(
        self, name: str, plan: dict[str, Any] | None, actor: str, reason: str
    ) -> Rollout:
        # Its flag is written a moment before its state: the orphan check waits.
        async with self.starting:
            return await self._start(name, plan, actor, reason)

    async def _start(
        self, name: str, plan: dict[str, Any] | None, actor: str, reason: str
    ) -> Rollout:
        experiment = self.config.experiments.get(name)
        if experiment is None:
            raise UnknownRollout(f"unknown experiment {name!r}")
        held = await self.rollouts.get(name)
        if held is not None and held.state not in FINISHED:
            raise RolloutError(f"a rollout of {name} is {held.state} already")
        now = self.clock()
        draft = Rollout(
            name,
            "running",
            0,
            now,
            self.flags.table.get(name).version,
            now,
            actor,
            plan,
            generation=held.generation if held else 0,
        )
        resolved = self.plan_of(draft)
        first = resolved.live_bp(0)
        draft_flag = self.flags.table.get(name)
        if draft_flag.basis_points != first:
            [flag] = await self.flags.set_percentages(
                {name: first},
                by=actor,
                reason=f"rollout started: {reason}",
                expected={name: draft_flag.version},
            )
            draft = Rollout(
                name, "running", 0, now, flag.version, now, actor, plan, generation=draft.generation
            )
        started = draft if held is None else draft.next()
        await self.rollouts.put(started, held.generation if held else None)
        self._remember(started)
        await self.record(
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
        self._seen.pop(name, None)
        return started

    @_one_at_a_time
    async def approve(
        self, name: str, percentage: float | None, actor: str, reason: str
    ) -> Rollout:
        rollout = await self.get(name)
        if rollout.state in FINISHED:  # one rule with promote: a finished rollout moves no more
            raise RolloutError(f"the rollout is {rollout.state}")
        plan = self.plan_of(rollout)
        following = rollout.stage_index + 1
        if following >= len(plan.stages):
            raise RolloutError("no stage left to approve")
        wanted = plan.stages[following].percentage_bp
        if percentage is not None and round(percentage * 100) != wanted:
            raise RolloutError(
                f"the stage pending approval is {wanted / 100:g}%, not {percentage:g}%"
            )
        updated = rollout.next(approvals=(*rollout.approvals, following))
        await self._save(
            rollout, updated, None, actor, None, change=f"approved {wanted / 100:g}%", reason=reason
        )
        if rollout.state == "awaiting_approval":
            decision = await self.evaluate(updated, plan, self.clock())
            with _changed_by_hand(name):
                if decision.verdict == "rollback":
                    await self._act(updated, plan, decision, self.clock(), _Seen())
                    return await self.get(name)
                return await self._promote(
                    updated, plan, following, decision, actor, f"approved by {actor}: {reason}"
                )
        return updated

    @_one_at_a_time
    async def set_state(self, name: str, action: str, actor: str, reason: str) -> Rollout:
        rollout = await self.get(name)
        if action == "pause":
            if rollout.state not in ACTIVE:
                raise RolloutError(f"cannot pause a rollout that is {rollout.state}")
            updated = rollout.next(state="paused", reason=f"paused by {actor}: {reason}")
        elif action == "resume":
            if rollout.state not in ("paused", "escalated"):
                raise RolloutError(f"cannot resume a rollout that is {rollout.state}")
            flag = self.flags.table.get(name)
            updated = rollout.next(
                state="running", flag_version=flag.version, reason=f"resumed by {actor}: {reason}"
            )
        elif action == "abort":
            if rollout.state in FINISHED:
                raise RolloutError(f"the rollout is {rollout.state} already")
            version = await self._to_zero(name, actor, f"aborted: {reason}")
            updated = rollout.next(
                state="aborted", flag_version=version, reason=f"aborted by {actor}: {reason}"
            )
        else:
            raise UnknownRollout(f"unknown action {action!r}")
        await self._save(rollout, updated, None, actor, updated.state, reason=reason)
        self._seen.pop(name, None)
        return updated

    async def _to_zero(self, name: str, actor: str, reason: str) -> int:
        """The flag to 0% whatever version it is at now: abort is the safe direction, so a
        change by hand since the rollout last looked (its expected version is stale) is
        re-read and written over, compare-and-set on the version as it stands. Returns the
        flag's version once at 0%."""
        flag = self.flags.table.get(name)
        for _ in range(ABORT_TRIES):
            if flag.basis_points == 0:
                return flag.version
            try:
                [written] = await self.flags.set_percentages(
                    {name: 0}, by=actor, reason=reason, expected={name: flag.version}
                )
                return written.version
            except VersionConflict as exc:
                flag = exc.current  # written meanwhile: once more on what is there now
        raise RolloutError(f"{name} kept changing while aborting; try again")

    @_one_at_a_time
    async def promote(self, name: str, actor: str, reason: str) -> Rollout:
        """A manual skip to the next stage (from the holdout: its release to 100%, the
        rollout completed), recorded as an override."""
        rollout = await self.get(name)
        if rollout.state in FINISHED:
            raise RolloutError(f"the rollout is {rollout.state}")
        plan = self.plan_of(rollout)
        following = rollout.stage_index + 1
        why = f"override by {actor}: {reason}"
        if following >= len(plan.stages) and not plan.holds_out(rollout.stage_index):
            raise RolloutError("the rollout is at its last stage")
        with _changed_by_hand(name):
            if following >= len(plan.stages):
                return await self._complete(rollout, plan, None, actor, why)
            return await self._promote(rollout, plan, following, None, actor, why)

    @_one_at_a_time
    async def set_incident(self, name: str, open_: bool, description: str, actor: str) -> Rollout:
        rollout = await self.get(name)
        updated = rollout.next(incident=description if open_ else None)
        await self._save(
            rollout,
            updated,
            None,
            actor,
            None,
            change="incident opened" if open_ else "incident closed",
            reason=description,
        )
        return updated

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
