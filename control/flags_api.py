"""Flag endpoints: read, set (one or many atomically), history, instances, rollback."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from aiohttp import web

from abgate.config.fields import parse_percentage
from abgate.control.current import config_of
from abgate.control.http import ApiError, json_object, json_response
from abgate.state.errors import StoreUnavailable
from abgate.state.flags import Flag, FlagStore, Instance, UnknownFlag, VersionConflict

log = logging.getLogger("abgate.control")

STORE = web.AppKey("store", FlagStore)
ROLLBACK_TIMEOUT = 10.0
CONVERGENCE_POLL = 0.01


def _store(request: web.Request) -> FlagStore:
    return request.app[STORE]


def _known(store: FlagStore, name: str) -> str:
    if name not in store.table:
        raise ApiError(404, f"unknown flag {name!r}")
    return name


def _percentage(value: Any, field: str) -> int:
    if isinstance(value, Decimal) and _decimals(value) > 2:
        # Decided on the digits as written: arithmetic in Decimal's default context would
        # round 10.000000000000000000000000000001 to 10 and 1e-999999999 to 0 first.
        raise ApiError(400, f"{field}: at most two decimals (0.01% steps), got {value}")
    problems: list[str] = []
    basis_points = parse_percentage(value, problems.append)
    if basis_points is None:
        raise ApiError(400, f"{field}: {problems[0]}")
    return basis_points


def _decimals(value: Decimal) -> int:
    """How many decimal places `value` has as written, trailing zeros aside."""
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int) or not any(digits):
        return 0
    trailing = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + trailing))


def _reason(body: Mapping[str, Any], default: str = "") -> str:
    reason = body.get("reason", default)
    if not isinstance(reason, str) or len(reason) > 1000:
        raise ApiError(400, "reason: expected a string of at most 1000 characters")
    return reason


def caller(request: web.Request) -> str:
    return request.headers.get("X-ABGate-Actor") or f"api@{request.remote or 'unknown'}"


MAX_VERSION = 2**63 - 1  # Redis's integers


def _version(value: Any, field: str) -> int:
    # A whole number may be written 3.0 (JSON Schema's integer says so too); 1e308 is whole
    # too, and beyond any version (Decimal's `% 1` would raise on it).
    whole = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value()
    )
    if not whole or not 1 <= value <= MAX_VERSION:
        got = f"the string {value!r}" if isinstance(value, str) else f"{value}"
        raise ApiError(
            400,
            f"{field}: expected the flag version (a whole number from 1 to {MAX_VERSION}) "
            f"the write is based on, got {got}",
        )
    return int(value)


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
            current=exc.current.as_json(),
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
    return json_response({"flags": [flag.as_json() for flag in _store(request).table.all()]})


async def get_flag(request: web.Request) -> web.Response:
    try:
        return json_response(_store(request).table.get(request.match_info["name"]).as_json())
    except UnknownFlag:
        raise ApiError(404, f"unknown flag {request.match_info['name']!r}") from None


async def set_flag(request: web.Request) -> web.Response:
    name = _known(_store(request), request.match_info["name"])
    body = await json_object(
        request, allowed={"percentage", "reason", "expected_version"}, exact=True
    )
    if "percentage" not in body:
        raise ApiError(400, "percentage: required (a number from 0 to 100)")
    basis_points = _percentage(body["percentage"], "percentage")
    expected = (
        {name: _version(body["expected_version"], "expected_version")}
        if "expected_version" in body
        else None
    )
    flags = await _write(request, {name: basis_points}, _reason(body), expected)
    return json_response(flags[0].as_json())


async def set_flags(request: web.Request) -> web.Response:
    """`{"flags": {"name": percentage, ...}, "reason": "..."}`: all or nothing."""
    store = _store(request)
    body = await json_object(request, allowed={"flags", "reason", "expected_versions"}, exact=True)
    wanted = body.get("flags")
    if not isinstance(wanted, dict) or not wanted:
        raise ApiError(400, "flags: expected an object of flag name to percentage")
    changes = {
        _known(store, name): _percentage(value, f"flags.{name}") for name, value in wanted.items()
    }
    versions = body.get("expected_versions")
    if versions is not None and (
        not isinstance(versions, dict) or not set(versions) <= set(changes)
    ):
        raise ApiError(
            400,
            "expected_versions: an object of flag name (among flags) to the "
            "version the write is based on",
        )
    expected = (
        {name: _version(v, f"expected_versions.{name}") for name, v in versions.items()}
        if versions
        else None
    )
    flags = await _write(request, changes, _reason(body), expected)
    return json_response({"flags": [flag.as_json() for flag in flags]})


async def flag_history(request: web.Request) -> web.Response:
    store = _store(request)
    name = _known(store, request.match_info["name"])
    limit_text = request.query.get("limit", "100")
    if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text) <= 10_000:
        raise ApiError(400, "limit: expected a whole number from 1 to 10000")
    entries = await store.history(name, int(limit_text))
    return json_response({"name": name, "history": entries})


async def list_instances(request: web.Request) -> web.Response:
    store = _store(request)
    instances = await store.instances()
    flags = store.table.all()
    return json_response({"instances": [i.as_json(flags) for i in instances]})


async def rollback(request: web.Request) -> web.Response:
    """Set treatment to 0% for the named experiments (all if none) in one atomic write, then
    answer once every live instance routes with it, or 504 with the laggards. A name may be
    a group the config defines (control.groups): its experiments."""
    store = _store(request)
    body = await json_object(request, allowed={"experiments", "reason", "timeout"})
    # Only a missing field means every experiment: [], "" or null is a mistake, not "all".
    names = (
        body["experiments"] if "experiments" in body else [flag.name for flag in store.table.all()]
    )
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ApiError(
            400,
            "experiments: expected a non-empty list of experiment or group names "
            "(leave the field out to roll back every experiment)",
        )
    config = config_of(request.app)
    groups = config.control.groups if config is not None else {}
    names = list(dict.fromkeys(e for n in names for e in groups.get(n, (n,))))
    timeout = body.get("timeout", ROLLBACK_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
        raise ApiError(400, "timeout: expected seconds, more than 0 and at most 300")
    started = time.monotonic()
    flags = await _write(
        request, {_known(store, n): 0 for n in names}, _reason(body, "emergency rollback")
    )
    laggards, instances, unknown = await _wait_for_convergence(
        store, flags, started + float(timeout)
    )
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    table = store.table.all()
    payload = {
        "flags": [flag.as_json() for flag in flags],
        "elapsed_ms": elapsed_ms,
        # null: nobody can tell (the instance registry could not be read), never "true".
        "converged": None if unknown else not laggards,
        "instances": [instance.as_json(table) for instance in instances],
        "laggards": [instance.id for instance in laggards],
    }
    if unknown:
        payload["convergence_unknown"] = unknown
        log.error("rollback of %s written; convergence unknown: %s", ", ".join(names), unknown)
        return json_response(payload)
    if laggards:
        log.error(
            "rollback of %s: %d instance(s) did not converge within %ss: %s",
            ", ".join(names),
            len(laggards),
            timeout,
            [i.id for i in laggards],
        )
        return json_response(payload, 504)
    log.warning(
        "rollback of %s reached %d instance(s) in %.1f ms",
        ", ".join(names),
        len(instances),
        elapsed_ms,
    )
    return json_response(payload)


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
