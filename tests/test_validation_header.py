"""`X-Test-Mode: validation` adds abgate's routing decision to a JSON answer; without the
header every body passes untouched, and a body that is not a JSON object always does."""

from __future__ import annotations

import orjson
from aiohttp import ClientSession, web

from abgate.control.serve import embedded
from tests.servers import TEST_METRICS, make_config, serve_app

CONFIDENCE = {"confidence": {"type": "continuous", "direction": "higher", "json": "$.confidence"}}


async def ask(session: ClientSession, url: str, **headers: str) -> bytes:
    async with session.get(url, headers={"X-User-Id": "alice", **headers}) as response:
        assert response.status == 200
        return await response.read()


async def test_the_routing_decision_is_added_only_when_asked(
    session: ClientSession, agents: dict[str, str]
) -> None:
    config = make_config(
        agents, percentage=100, experiment={"metrics": {**TEST_METRICS, **CONFIDENCE}}
    )
    async with embedded(config) as running:
        url = f"{running.proxy_url}/api/agent/documentation-keeper/decide"
        asked = orjson.loads(await ask(session, url, **{"X-Test-Mode": "validation"}))
        plain = orjson.loads(await ask(session, url))
        decision = asked.pop("routing_decision")
        assert decision == {
            "source": "treatment",
            "confidence": asked["confidence"],
            "fallback_available": True,
        }
        assert set(asked) == set(plain)  # the agent's own fields, untouched
        assert "routing_decision" not in plain
        async with session.post(
            f"{running.control_url}/api/breakers/control", json={"state": "forced_open"}
        ) as response:
            assert response.status == 200
        asked = orjson.loads(await ask(session, url, **{"X-Test-Mode": "validation"}))
        assert asked["routing_decision"]["fallback_available"] is False


async def test_other_bodies_pass_untouched(session: ClientSession) -> None:
    bodies = {"/text": b"not json {", "/list": b"[1, 2]", "/object": b'{"a": 1}'}

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=bodies[request.path], content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    async with serve_app(app) as upstream:
        config = make_config({"control": upstream, "treatment": upstream}, percentage=0)
        async with embedded(config) as running:
            for path, body in bodies.items():
                got = await ask(session, running.proxy_url + path, **{"X-Test-Mode": "other"})
                assert got == body
                got = await ask(session, running.proxy_url + path, **{"X-Test-Mode": "validation"})
                if path == "/object":
                    assert orjson.loads(got) == {
                        "a": 1,
                        "routing_decision": {
                            "source": "control",
                            "confidence": None,
                            "fallback_available": True,
                        },
                    }
                else:
                    assert got == body
