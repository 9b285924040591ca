"""The OpenAPI document and the control API cannot drift apart: every route served is
described, and every described path is served."""

from __future__ import annotations

from aiohttp import ClientSession, web

from abgate.control.openapi import OPENAPI
from abgate.control.serve import embedded
from tests.servers import make_config


def served_operations(app: web.Application) -> set[tuple[str, str]]:
    operations = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method == "HEAD":  # aiohttp adds HEAD to every GET
            continue
        operations.add((path, route.method.lower()))
    return operations


def documented_operations() -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in OPENAPI["paths"].items()
        for method in item
        if method in {"get", "post", "put", "delete", "patch"}
    }


async def test_every_route_is_documented_and_every_document_path_served(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents)) as running:
        async with session.get(f"{running.control_url}/api/openapi.json") as response:
            assert (await response.json()) == OPENAPI
        from abgate.control.api import create_control_app
        from abgate.control.live_plane import RemotePlane

        app = create_control_app(
            running.backend.store,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            None,
            running.reloader,
            RemotePlane(running.control.server, running.control.rollouts.config),
            running.backend,
            running.worker,
        )
    served, documented = served_operations(app), documented_operations()
    assert served - documented == set(), "served but not in the OpenAPI document"
    assert documented - served == set(), "in the OpenAPI document but not served"


def test_every_operation_has_a_summary_and_responses() -> None:
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation.get("summary"), (path, method)
            assert {"200", "201"} & set(operation["responses"]), (path, method)
            if method == "post":  # writes take the token when one is configured
                assert "401" in operation["responses"], (path, method)
