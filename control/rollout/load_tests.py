"""A stage's load test: a stage that asks for one runs it once, as an owned task, before its
gates may promote it (control/load_test.py sends the requests).

Passed: the stage goes on, the pass remembered in the rollout. Failed: the rollout is
escalated with the numbers and waits for a person (`resume` runs it again). Either way the
history says so, with the test's summary as its inputs.
"""

from __future__ import annotations

import asyncio

from abgate.config.model import RolloutPlan
from abgate.control.load_test import LoadPlan, LoadResult, run_load
from abgate.control.rollout.records import ACTOR, RolloutRecords
from abgate.state.rollouts import Rollout
from abgate.state.tasks import stop_tasks


class StageLoadTests:
    """The load tests running, one per (experiment, stage), owned until they end."""

    def __init__(self, records: RolloutRecords) -> None:
        self.records = records
        self.running: dict[tuple[str, int], asyncio.Task[LoadResult]] = {}

    async def stop(self) -> None:
        """The load tests still running, ended (the controller's loop ends)."""
        await stop_tasks(list(self.running.values()))

    async def check(
        self, rollout: Rollout, plan: RolloutPlan, url: str
    ) -> tuple[bool | None, Rollout]:
        """The stage's load test and the rollout as it now stands: True passed or none asked,
        False running; None: it failed (the rollout is escalated with its numbers and waits
        for a person; `resume` runs it again). Started once per stage, as a task sending
        its requests to `url`."""
        stage = plan.stages[rollout.stage_index]
        if stage.load_test is None or rollout.stage_index in rollout.load_tests:
            return True, rollout
        if rollout.state == "escalated" and rollout.reason.startswith("load test"):
            return None, rollout
        key = (rollout.experiment, rollout.stage_index)
        task = self.running.get(key)
        if task is None:
            test = stage.load_test
            self.running[key] = asyncio.create_task(
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
        del self.running[key]
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
        await self.records.put(updated, rollout.generation)
        await self.records.record(
            {
                "time": self.records.clock(),
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
