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
from typing import Any

from aiohttp import web

from abgate.config.errors import ConfigError
from abgate.config.model import RolloutPlan
from abgate.control.current import resolve
from abgate.control.flags_api import caller
from abgate.control.http import CONTROLLER, ApiError, json_object, json_response
from abgate.control.rollout.controller import (
    NoRolloutPlan,
    RolloutController,
    RolloutError,
    UnknownRollout,
)
from abgate.control.rollout.gates import Decision
from abgate.state.rollouts import Rollout, RolloutConflict

_VERDICT = {"continue": "promote", "complete": "promote", "hold": "hold", "rollback": "rollback"}
# What Flagger sends to a webhook (its payload; `message` and `type` for events).
FLAGGER_PAYLOAD = {"name", "namespace", "phase", "metadata", "checksum", "type", "message"}


def _controller(request: web.Request) -> RolloutController:
    controller = request.app.get(CONTROLLER)
    if controller is None:
        raise ApiError(404, "no rollout controller here: use abgate run or abgate control")
    return controller


def _reason(body: dict[str, Any]) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise ApiError(400, "reason: expected a string of at most 500 characters")
    return reason


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


def stage_phase(plan: RolloutPlan, rollout: Rollout) -> tuple[str, float]:
    """What the stage is and the treatment share it runs at, said so that the holdout never
    reads as 100% (nor a released one as 95%)."""
    index = rollout.stage_index
    if plan.holds_out(index):
        if rollout.state == "completed":
            return "released", 100.0
        return "holdout", plan.live_bp(index) / 100
    percentage = plan.stages[index].percentage_bp / 100
    return ("bake" if percentage == 100 else "ramp"), percentage


async def _view(controller: RolloutController, rollout: Rollout) -> dict[str, Any]:
    plan = controller.plan_of(rollout)
    stage = plan.stages[rollout.stage_index]
    phase, percentage = stage_phase(plan, rollout)
    decision = controller.last_decision(rollout.experiment)
    following = (
        plan.stages[rollout.stage_index + 1] if rollout.stage_index + 1 < len(plan.stages) else None
    )
    return {
        "experiment": rollout.experiment,
        "state": rollout.state,
        "stage": {
            "index": rollout.stage_index,
            "percentage": percentage,
            "phase": phase,
            "holdout": plan.holdout.percentage_bp / 100 if plan.holdout else None,
            "started_at": rollout.stage_started_at,
            "min_duration": stage.min_duration,
        },
        "stages": plan.percentages,
        "decision": rollout.decision,
        "reason": rollout.reason,
        "eta_seconds": rollout.eta_seconds,
        "gates": [gate.as_json() for gate in decision.gates] if decision else [],
        "needed": decision.needed if decision else {},
        "next": None
        if following is None
        else {
            "percentage": following.percentage_bp / 100,
            "approval": following.approval,
            "approved": rollout.stage_index + 1 in rollout.approvals,
        },
        "incident": rollout.incident,
        "started_at": rollout.started_at,
        "started_by": rollout.started_by,
        "updated_at": rollout.updated_at,
        "generation": rollout.generation,
        "acting": controller.acting,
    }


async def start(request: web.Request) -> web.Response:
    controller = _controller(request)
    body = await json_object(request, allowed={"plan", "reason"})
    plan = body.get("plan")
    if plan is not None and not isinstance(plan, dict):
        raise ApiError(400, "plan: expected an object like the YAML rollout section")
    name = await resolve(request.app, request.match_info["experiment"])
    rollout = await _call(controller.start(name, plan, caller(request), _reason(body)))
    return json_response(await _view(controller, rollout), 201)


async def list_rollouts(request: web.Request) -> web.Response:
    controller = _controller(request)
    rollouts = await controller.rollouts.all()
    return json_response({"rollouts": [await _view(controller, r) for r in rollouts]})


async def show(request: web.Request) -> web.Response:
    controller = _controller(request)
    name = await resolve(request.app, request.match_info["experiment"])
    rollout = await _call(controller.get(name))
    return json_response(await _view(controller, rollout))


async def approve(request: web.Request) -> web.Response:
    controller = _controller(request)
    body = await json_object(request, allowed={"stage", "reason"})
    stage = body.get("stage")
    if stage is not None and (
        isinstance(stage, bool) or not isinstance(stage, int | float) or not 0 < stage <= 100
    ):
        raise ApiError(400, "stage: expected the percentage you approve, above 0, at most 100")
    name = await resolve(request.app, request.match_info["experiment"])
    rollout = await _call(controller.approve(name, stage, caller(request), _reason(body)))
    return json_response(await _view(controller, rollout))


async def act(request: web.Request) -> web.Response:
    controller = _controller(request)
    body = await json_object(request, allowed={"reason"})
    name = await resolve(request.app, request.match_info["experiment"])
    action = request.path.rsplit("/", 1)[1]
    if action == "promote":
        rollout = await _call(controller.promote(name, caller(request), _reason(body)))
    else:
        rollout = await _call(controller.set_state(name, action, caller(request), _reason(body)))
    return json_response(await _view(controller, rollout))


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
    return json_response(
        {"experiment": name, "history": await controller.rollouts.history(name, limit)}
    )


async def _fresh(controller: RolloutController, name: str) -> tuple[Rollout, Decision]:
    rollout = await _call(controller.get(name))
    plan = controller.plan_of(rollout)
    return rollout, await controller.evaluate(rollout, plan, time.time())


async def verdict(request: web.Request) -> web.Response:
    """200 whenever a verdict can be computed: Argo's web provider treats non-2xx as an
    error, not a failure; its successCondition reads `decision`."""
    controller = _controller(request)
    name = await resolve(request.app, request.match_info["experiment"])
    rollout, decision = await _fresh(controller, name)
    data = decision.as_json()
    data.update(
        decision="rollback" if rollout.state == "rolled_back" else _VERDICT[decision.verdict],
        verdict=decision.verdict,
        state=rollout.state,
    )
    return json_response(data)


async def flagger_gate(request: web.Request) -> web.Response:
    controller = _controller(request)
    name = await resolve(request.app, request.match_info["experiment"])
    hook = request.match_info["hook"]
    body = await json_object(request, allowed=FLAGGER_PAYLOAD)  # refused if not Flagger's
    for key, value in body.items():
        if not isinstance(value, dict if key == "metadata" else str):
            kind = "an object" if key == "metadata" else "a string"
            raise ApiError(400, f"{key}: expected {kind} (Flagger's webhook payload)")
    if hook == "event":
        await controller.record(
            {
                "time": time.time(),
                "experiment": name,
                "actor": caller(request),
                "transition": None,
                "decision": "event",
                "reason": "flagger event",
                "inputs": body,
            },
        )
        return json_response({"recorded": True})
    if hook not in ("confirm-promotion", "confirm-traffic-increase", "rollback"):
        raise ApiError(
            404,
            f"unknown hook {hook!r} (confirm-promotion, confirm-traffic-increase, rollback, event)",
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
    return json_response(
        {"decision": _VERDICT[decision.verdict], "approved": approved, "reason": decision.reason},
        200 if ok else 403,
    )


async def decision_call(request: web.Request) -> web.Response:
    """The requirements' call: may the rollout go from current to target now?"""
    controller = _controller(request)
    body = await json_object(
        request, allowed={"experiment", "current_percentage", "target_percentage"}
    )
    name = await resolve(request.app, body.get("experiment"))  # none named: the current one
    for key in ("current_percentage", "target_percentage"):
        value = body.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            raise ApiError(400, f"{key}: expected a percentage between 0 and 100")
    experiment = controller.config.experiments[name]
    rollout = await controller.rollouts.get(name)
    flag = controller.flags.table.get(name)
    if rollout is None:
        if experiment.rollout is None:
            raise ApiError(400, f"experiment {name!r} has no rollout plan")
        plan = experiment.rollout
        current = round(body["current_percentage"] * 100)
        index = next((i for i, s in enumerate(plan.stages) if s.percentage_bp >= current), 0)
        rollout = Rollout(
            name, "pending", index, flag.updated_at, flag.version, flag.updated_at, "decision-call"
        )
    plan = controller.plan_of(rollout)
    decision = await controller.evaluate(rollout, plan, time.time())
    answer = {
        "continue": "continue",
        "complete": "continue",
        "hold": "hold",
        "rollback": "rollback",
    }[decision.verdict]
    return json_response(
        {
            "decision": answer,
            "reason": decision.reason,
            "eta_seconds": decision.eta_seconds,
            "checks": [gate.as_json() for gate in decision.gates],
            "current_percentage": body["current_percentage"],
            "target_percentage": body["target_percentage"],
        }
    )


async def incidents(request: web.Request) -> web.Response:
    controller = _controller(request)
    body = await json_object(request, allowed={"experiment", "open", "description"})
    name, open_ = body.get("experiment"), body.get("open", True)
    description = body.get("description", "opened by hand")
    if not isinstance(name, str):
        raise ApiError(400, "experiment: required")
    if not isinstance(open_, bool):
        raise ApiError(400, "open: expected true or false")
    if not isinstance(description, str) or not description or len(description) > 500:
        raise ApiError(400, "description: expected a non-empty string of at most 500 characters")
    rollout = await _call(controller.set_incident(name, open_, description, caller(request)))
    return json_response({"experiment": name, "incident": rollout.incident})


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
