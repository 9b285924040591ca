"""Flag endpoints: read, set (one or many atomically), history, instances, rollback."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from abgate.config.fields import shown
from abgate.control.current import config_of
from abgate.control.flag_payloads import (
    FlagAnswer,
    FlagHistoryAnswer,
    FlagsAnswer,
    InstanceAnswer,
    InstancesAnswer,
    RollbackAnswer,
    RollbackBody,
    SetFlagBody,
    SetFlagsBody,
)
from abgate.control.http import ApiError
from abgate.control.payloads import answer, read_body
from abgate.state.errors import StoreUnavailable
from abgate.state.flags import Flag, FlagStore, Instance, UnknownFlag, VersionConflict

log = logging.getLogger("abgate.control")

STORE = web.AppKey("store", FlagStore)
CONVERGENCE_POLL = 0.01


def _store(request: web.Request) -> FlagStore:
    return request.app[STORE]


def _known(store: FlagStore, name: str) -> str:
    if name not in store.table:
        raise ApiError(404, f"unknown flag {shown(name)}")
    return name


def caller(request: web.Request) -> str:
    return request.headers.get("X-ABGate-Actor") or f"api@{request.remote or 'unknown'}"


async def _write(
    request: web.Request,
    changes: dict[str, int],
    reason: str,
    expected: dict[str, int] | None = None,
) -> list[Flag]:
    """`expected` makes it compare-and-set: another writer's change in between is a 409
    naming the flag as it now stands, and nothing is written."""
    try:
        flags = await _store(request).set_percentages(
            changes, by=caller(request), reason=reason, expected=expected
        )
    except VersionConflict as exc:
        raise ApiError(
            409,
            f"{exc}: changed by {exc.current.updated_by} "
            f"({exc.current.reason or 'no reason given'}); nothing was changed",
            current=FlagAnswer.model_validate(exc.current).model_dump(mode="json"),
        ) from exc
    for flag in flags:
        log.info(
            "flag %s set to %s%% (version %d) by %s: %s",
            flag.name,
            flag.percentage,
            flag.version,
            flag.updated_by,
            reason or "-",
        )
    return flags


async def list_flags(request: web.Request) -> web.Response:
    return answer(FlagsAnswer.of(_store(request).table.all()))


async def get_flag(request: web.Request) -> web.Response:
    try:
        flag = _store(request).table.get(request.match_info["name"])
    except UnknownFlag:
        raise ApiError(404, f"unknown flag {shown(request.match_info['name'])}") from None
    return answer(FlagAnswer.model_validate(flag))


async def set_flag(request: web.Request) -> web.Response:
    name = _known(_store(request), request.match_info["name"])
    body = await read_body(request, SetFlagBody, exact=True)
    expected = None if body.expected_version is None else {name: body.expected_version}
    flags = await _write(request, {name: body.percentage}, body.reason, expected)
    return answer(FlagAnswer.model_validate(flags[0]))


async def set_flags(request: web.Request) -> web.Response:
    """`{"flags": {"name": percentage, ...}, "reason": "..."}`: all or nothing."""
    store = _store(request)
    body = await read_body(request, SetFlagsBody, exact=True)
    changes = {_known(store, name): value for name, value in body.flags.items()}
    versions = body.expected_versions
    if versions is not None and not set(versions) <= set(changes):
        raise ApiError(
            400,
            "expected_versions: an object of flag name (among flags) to the "
            "version the write is based on",
        )
    flags = await _write(request, changes, body.reason, versions or None)
    return answer(FlagsAnswer.of(flags))


async def flag_history(request: web.Request) -> web.Response:
    store = _store(request)
    name = _known(store, request.match_info["name"])
    limit_text = request.query.get("limit", "100")
    if (
        not (limit_text.isascii() and limit_text.isdigit())
        or len(limit_text) > 5  # before int(): Python refuses over 4,300 digits
        or not 1 <= int(limit_text) <= 10_000
    ):
        raise ApiError(400, "limit: expected a whole number from 1 to 10000")
    entries = await store.history(name, int(limit_text))
    return answer(FlagHistoryAnswer.model_validate({"name": name, "history": entries}))


async def list_instances(request: web.Request) -> web.Response:
    store = _store(request)
    instances = await store.instances()
    flags = store.table.all()
    return answer(InstancesAnswer(instances=[InstanceAnswer.of(i, flags) for i in instances]))


async def rollback(request: web.Request) -> web.Response:
    """Set treatment to 0% for the named experiments (all if none) in one atomic write, then
    answer once every live instance routes with it, or 504 with the laggards. A name may be
    a group the config defines (control.groups): its experiments."""
    store = _store(request)
    body = await read_body(request, RollbackBody)
    # Only a missing field means every experiment: [], "" or null is a mistake, not "all".
    names = (
        body.experiments
        if "experiments" in body.model_fields_set
        else [flag.name for flag in store.table.all()]
    )
    config = config_of(request.app)
    groups = config.control.groups if config is not None else {}
    names = list(dict.fromkeys(e for n in names for e in groups.get(n, (n,))))
    timeout = body.timeout
    started = time.monotonic()
    flags = await _write(request, {_known(store, n): 0 for n in names}, body.reason)
    laggards, instances, unknown = await _wait_for_convergence(store, flags, started + timeout)
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    table = store.table.all()
    payload = RollbackAnswer(
        flags=[FlagAnswer.model_validate(flag) for flag in flags],
        elapsed_ms=elapsed_ms,
        # null: nobody can tell (the instance registry could not be read), never "true".
        converged=None if unknown else not laggards,
        convergence_unknown=unknown,
        instances=[InstanceAnswer.of(instance, table) for instance in instances],
        laggards=[instance.id for instance in laggards],
    )
    if unknown:
        log.error("rollback of %s written; convergence unknown: %s", ", ".join(names), unknown)
        return answer(payload)
    if laggards:
        log.error(
            "rollback of %s: %d instance(s) did not converge within %ss: %s",
            ", ".join(names),
            len(laggards),
            timeout,
            [i.id for i in laggards],
        )
        return answer(payload, 504)
    log.warning(
        "rollback of %s reached %d instance(s) in %.1f ms",
        ", ".join(names),
        len(instances),
        elapsed_ms,
    )
    return answer(payload)


async def _wait_for_convergence(
    store: FlagStore,
    flags: list[Flag],
    deadline: float,
) -> tuple[list[Instance], list[Instance], str | None]:
    """(laggards, instances, why convergence is unknown: None when the registry answered)."""
    while True:
        try:
            instances = await store.instances()
        except StoreUnavailable as exc:
            if time.monotonic() >= deadline:
                return [], [], f"the instance registry is unreachable: {exc}"
            await asyncio.sleep(CONVERGENCE_POLL)
            continue
        laggards = [i for i in instances if not i.converged(flags)]
        if not laggards or time.monotonic() >= deadline:
            return laggards, instances, None
        await asyncio.sleep(CONVERGENCE_POLL)  # instances report through their heartbeats


def add_flag_routes(app: web.Application, store: FlagStore) -> None:
    app[STORE] = store
    app.router.add_get("/api/flags", list_flags)
    app.router.add_post("/api/flags", set_flags)
    app.router.add_get("/api/flags/{name}", get_flag)
    app.router.add_post("/api/flags/{name}", set_flag)
    app.router.add_get("/api/flags/{name}/history", flag_history)
    app.router.add_get("/api/instances", list_instances)
    app.router.add_post("/api/rollback", rollback)
