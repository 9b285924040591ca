"""Rollouts on the control API, and verdicts for the tools people already run.

    POST /api/rollouts/{experiment}                   start (body: optional plan, reason)
    GET  /api/rollouts                                every rollout
    GET  /api/rollouts/{experiment}                   state, stage, decision, gates, ETA
    POST /api/rollouts/{experiment}/approve           {"stage": 50}
    POST /api/rollouts/{experiment}/pause|resume|abort|promote
    GET  /api/rollouts/{experiment}/history           newest first
    GET  /api/rollouts/{experiment}/verdict           Argo Rollouts' web metric provider
    POST /api/rollouts/{experiment}/gates/{hook}      Flagger webhooks
    POST /api/rollout/decision                        {"current_percentage", "target_percentage"}
    POST /api/incidents                               {"experiment", "open", "description"}

Mutations take the control token and record the actor (X-ABGate-Actor, or the caller).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Literal

from aiohttp import web

from abgate.config.errors import ConfigError
from abgate.config.fields import shown
from abgate.config.model import RolloutPlan
from abgate.control.current import resolve
from abgate.control.flags_api import caller
from abgate.control.gate_payloads import gate_entries
from abgate.control.http import CONTROLLER, ApiError
from abgate.control.payloads import answer, read_body
from abgate.control.rollout import actions
from abgate.control.rollout.controller import RolloutController
from abgate.control.rollout.errors import NoRolloutPlan, RolloutError, UnknownRollout
from abgate.control.rollout.evaluation import evaluate
from abgate.control.rollout.gates import Decision
from abgate.control.rollout_payloads import (
    ActionBody,
    ApproveBody,
    ArgoDecision,
    DecisionAnswer,
    DecisionBody,
    FlaggerBody,
    HookAnswer,
    IncidentAnswer,
    IncidentBody,
    NextStageAnswer,
    RecordedAnswer,
    RolloutAnswer,
    RolloutHistoryAnswer,
    RolloutsAnswer,
    StageAnswer,
    StagePhase,
    StartBody,
    VerdictAnswer,
)
from abgate.state.rollouts import Rollout, RolloutConflict

_DECISION: dict[str, Literal["hold", "continue", "rollback"]] = {
    "continue": "continue",
    "complete": "continue",
    "hold": "hold",
    "rollback": "rollback",
}
_VERDICT: dict[str, ArgoDecision] = {
    "continue": "promote",
    "complete": "promote",
    "hold": "hold",
    "rollback": "rollback",
}


def _controller(request: web.Request) -> RolloutController:
    controller = request.app.get(CONTROLLER)
    if controller is None:
        raise ApiError(404, "no rollout controller here: use abgate run or abgate control")
    return controller


def _rollout_status(exc: RolloutError) -> int:
    if isinstance(exc, UnknownRollout):
        return 404
    if isinstance(exc, NoRolloutPlan):
        return 400
    return 409  # cannot be done now: the rollout's state forbids it


async def _call(coroutine: Any) -> Any:
    try:
        return await coroutine
    except RolloutError as exc:
        raise ApiError(_rollout_status(exc), str(exc)) from None
    except RolloutConflict as exc:  # another control process acted first (or took the lease)
        raise ApiError(409, f"{exc}; read the rollout again and retry") from None
    except ConfigError as exc:
        problems = [{"path": p.path, "message": p.message} for p in exc.problems]
        raise ApiError(400, f"invalid plan: {exc}", problems=problems) from None


def stage_phase(plan: RolloutPlan, rollout: Rollout) -> tuple[StagePhase, float]:
    """What the stage is and the treatment share it runs at, said so that the holdout never
    reads as 100% (nor a released one as 95%)."""
    index = rollout.stage_index
    if plan.holds_out(index):
        if rollout.state == "completed":
            return "released", 100.0
        return "holdout", plan.live_bp(index) / 100
    percentage = plan.stages[index].percentage_bp / 100
    return ("bake" if percentage == 100 else "ramp"), percentage


def _view(controller: RolloutController, rollout: Rollout) -> RolloutAnswer:
    plan = controller.plan_of(rollout)
    stage = plan.stages[rollout.stage_index]
    phase, percentage = stage_phase(plan, rollout)
    decision = controller.last_decision(rollout.experiment)
    following = (
        plan.stages[rollout.stage_index + 1] if rollout.stage_index + 1 < len(plan.stages) else None
    )
    next_stage = None
    if following is not None:
        next_stage = NextStageAnswer(
            percentage=following.percentage_bp / 100,
            approval=following.approval,
            approved=rollout.stage_index + 1 in rollout.approvals,
        )
    stage_answer = StageAnswer(
        index=rollout.stage_index,
        percentage=percentage,
        phase=phase,
        holdout=plan.holdout.percentage_bp / 100 if plan.holdout else None,
        started_at=rollout.stage_started_at,
        min_duration=stage.min_duration,
    )
    return RolloutAnswer.model_validate(
        {
            **asdict(rollout),  # its own fields by name: state, decision, reason, incident ...
            "stage": stage_answer,
            "stages": plan.percentages,
            "gates": gate_entries(decision.gates) if decision else [],
            "needed": decision.needed if decision else {},
            "next": next_stage,
            "acting": controller.acting,
        }
    )


async def start(request: web.Request) -> web.Response:
    controller = _controller(request)
    body = await read_body(request, StartBody)
    name = await resolve(request.app, request.match_info["experiment"])
    rollout = await _call(actions.start(controller, name, body.plan, caller(request), body.reason))
    return answer(_view(controller, rollout), 201)


async def list_rollouts(request: web.Request) -> web.Response:
    controller = _controller(request)
    rollouts = await controller.rollouts.all()
    return answer(RolloutsAnswer(rollouts=[_view(controller, r) for r in rollouts]))


async def show(request: web.Request) -> web.Response:
    controller = _controller(request)
    name = await resolve(request.app, request.match_info["experiment"])
    rollout = await _call(controller.get(name))
    return answer(_view(controller, rollout))


async def approve(request: web.Request) -> web.Response:
    controller = _controller(request)
    body = await read_body(request, ApproveBody, exact=True)  # a stage's decimals as written
    name = await resolve(request.app, request.match_info["experiment"])
    rollout = await _call(
        actions.approve(controller, name, body.stage, caller(request), body.reason)
    )
    return answer(_view(controller, rollout))


async def act(request: web.Request) -> web.Response:
    controller = _controller(request)
    body = await read_body(request, ActionBody)
    name = await resolve(request.app, request.match_info["experiment"])
    action = request.path.rsplit("/", 1)[1]
    if action == "promote":
        rollout = await _call(actions.promote(controller, name, caller(request), body.reason))
    else:
        rollout = await _call(
            actions.set_state(controller, name, action, caller(request), body.reason)
        )
    return answer(_view(controller, rollout))


async def history(request: web.Request) -> web.Response:
    controller = _controller(request)
    name = await resolve(request.app, request.match_info["experiment"])
    await _call(controller.get(name))
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise ApiError(400, "limit: expected a whole number") from None
    if not 1 <= limit <= 10_000:
        raise ApiError(400, "limit: between 1 and 10000")
    entries = await controller.rollouts.history(name, limit)
    history = RolloutHistoryAnswer.model_validate({"experiment": name, "history": entries})
    return answer(history, as_recorded=True)


async def _fresh(controller: RolloutController, name: str) -> tuple[Rollout, Decision]:
    rollout = await _call(controller.get(name))
    plan = controller.plan_of(rollout)
    return rollout, await evaluate(controller, rollout, plan, time.time())


async def verdict(request: web.Request) -> web.Response:
    """200 whenever a verdict can be computed: Argo's web provider treats non-2xx as an
    error, not a failure; its successCondition reads `decision`."""
    controller = _controller(request)
    name = await resolve(request.app, request.match_info["experiment"])
    rollout, decision = await _fresh(controller, name)
    return answer(
        VerdictAnswer(
            decision="rollback" if rollout.state == "rolled_back" else _VERDICT[decision.verdict],
            kind=decision.kind,
            reason=decision.reason,
            eta_seconds=decision.eta_seconds,
            needed=decision.needed,
            gates=gate_entries(decision.gates),
            verdict=decision.verdict,
            state=rollout.state,
        )
    )


async def flagger_gate(request: web.Request) -> web.Response:
    controller = _controller(request)
    name = await resolve(request.app, request.match_info["experiment"])
    hook = request.match_info["hook"]
    body = await read_body(request, FlaggerBody)  # refused if not Flagger's
    if hook == "event":
        await controller.records.record(
            {
                "time": time.time(),
                "experiment": name,
                "actor": caller(request),
                "transition": None,
                "decision": "event",
                "reason": "flagger event",
                "inputs": body.model_dump(exclude_unset=True),
            },
        )
        return answer(RecordedAnswer(recorded=True))
    if hook not in ("confirm-promotion", "confirm-traffic-increase", "rollback"):
        raise ApiError(
            404,
            f"unknown hook {shown(hook)} "
            "(confirm-promotion, confirm-traffic-increase, rollback, event)",
        )
    rollout, decision = await _fresh(controller, name)
    plan = controller.plan_of(rollout)
    following = rollout.stage_index + 1
    approved = (
        following >= len(plan.stages)
        or not plan.stages[following].approval
        or following in rollout.approvals
    )
    if hook == "rollback":
        ok = decision.verdict == "rollback" or rollout.state == "rolled_back"
    else:
        ok = decision.verdict in ("continue", "complete") and approved
    return answer(
        HookAnswer(decision=_VERDICT[decision.verdict], approved=approved, reason=decision.reason),
        200 if ok else 403,
    )


async def decision_call(request: web.Request) -> web.Response:
    """The requirements' call: may the rollout go from current to target now?"""
    controller = _controller(request)
    body = await read_body(request, DecisionBody)
    name = await resolve(request.app, body.experiment)  # none named: the current one
    experiment = controller.config.experiments[name]
    rollout = await controller.rollouts.get(name)
    flag = controller.flags.table.get(name)
    if rollout is None:
        if experiment.rollout is None:
            raise ApiError(400, f"experiment {shown(name)} has no rollout plan")
        plan = experiment.rollout
        current = round(body.current_percentage * 100)
        index = next((i for i, s in enumerate(plan.stages) if s.percentage_bp >= current), 0)
        rollout = Rollout(
            name, "pending", index, flag.updated_at, flag.version, flag.updated_at, "decision-call"
        )
    plan = controller.plan_of(rollout)
    decision = await evaluate(controller, rollout, plan, time.time())
    return answer(
        DecisionAnswer(
            decision=_DECISION[decision.verdict],
            reason=decision.reason,
            eta_seconds=decision.eta_seconds,
            checks=gate_entries(decision.gates),
            current_percentage=body.current_percentage,
            target_percentage=body.target_percentage,
        )
    )


async def incidents(request: web.Request) -> web.Response:
    controller = _controller(request)
    body = await read_body(request, IncidentBody)
    rollout = await _call(
        actions.set_incident(
            controller, body.experiment, body.open, body.description, caller(request)
        )
    )
    return answer(IncidentAnswer(experiment=body.experiment, incident=rollout.incident))


def add_rollout_routes(app: web.Application, controller: RolloutController | None) -> None:
    if controller is not None:
        app[CONTROLLER] = controller
    app.router.add_get("/api/rollouts", list_rollouts)
    app.router.add_post("/api/rollouts/{experiment}", start)
    app.router.add_get("/api/rollouts/{experiment}", show)
    app.router.add_post("/api/rollouts/{experiment}/approve", approve)
    for action in ("pause", "resume", "abort", "promote"):
        app.router.add_post(f"/api/rollouts/{{experiment}}/{action}", act)
    app.router.add_get("/api/rollouts/{experiment}/history", history)
    app.router.add_get("/api/rollouts/{experiment}/verdict", verdict)
    app.router.add_post("/api/rollouts/{experiment}/gates/{hook}", flagger_gate)
    app.router.add_post("/api/rollout/decision", decision_call)
    app.router.add_post("/api/incidents", incidents)
