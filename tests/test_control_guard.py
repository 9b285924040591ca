"""What a web page in the operator's browser, or a sloppy client, can make the control API
do: nothing, unless it is the API's own origin writing JSON to a loopback name."""

from __future__ import annotations

import pytest
from aiohttp import ClientSession

from control.serve import embedded
from tests.servers import make_config, raw_request


async def flag(session: ClientSession, control: str) -> float:
    async with session.get(f"{control}/api/flags/exp") as response:
        return float((await response.json())["percentage"])


async def test_a_text_plain_write_is_refused(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents)) as running:
        control = running.control_url
        async with session.post(
            f"{control}/api/flags/exp",
            data=b'{"percentage": 100}',
            headers={"Content-Type": "text/plain"},
        ) as response:
            assert response.status == 415
            assert "Content-Type: application/json" in (await response.json())["error"]
        assert await flag(session, control) == 10


async def test_cross_origin_writes_are_refused(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents)) as running:
        control = running.control_url
        async with session.post(
            f"{control}/api/rollback", json={}, headers={"Origin": "http://evil.example"}
        ) as response:
            assert response.status == 403
            assert (await response.json())[
                "error"
            ] == "cross-origin write from 'http://evil.example' refused"
        assert await flag(session, control) == 10
        own = control  # the page the control API serves itself writes from its own origin
        async with session.post(
            f"{control}/api/flags/exp", json={"percentage": 20}, headers={"Origin": own}
        ) as response:
            assert response.status == 200


async def test_dns_rebinding_host_is_refused(agents: dict[str, str]) -> None:
    async with embedded(make_config(agents)) as running:
        answer = await raw_request(
            running.control_url,
            b"GET /api/flags HTTP/1.1\r\nHost: rebound.example:8092\r\nConnection: close\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 403")
        assert b"is not this loopback control API" in answer
        for host in (b"localhost:1", b"127.0.0.1:1", b"[::1]:1"):
            answer = await raw_request(
                running.control_url,
                b"GET /api/flags HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n",
            )
            assert answer.startswith(b"HTTP/1.1 200"), host


@pytest.mark.parametrize("experiments", [[], "", None])
async def test_rollback_of_nothing_named_is_not_a_rollback_of_everything(
    session: ClientSession, agents: dict[str, str], experiments: object
) -> None:
    async with embedded(make_config(agents)) as running:
        async with session.post(
            f"{running.control_url}/api/rollback", json={"experiments": experiments}
        ) as response:
            assert response.status == 400
            assert (
                "leave the field out to roll back every experiment"
                in (await response.json())["error"]
            )
        assert await flag(session, running.control_url) == 10


async def test_odd_query_values_and_methods_answer_json(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents)) as running:
        async with session.get(
            f"{running.control_url}/api/flags/exp/history?limit=%C2%B2"
        ) as response:
            assert response.status == 400
            assert (await response.json())["error"].startswith("limit: expected a whole number")
        async with session.delete(f"{running.control_url}/api/flags/exp") as response:
            assert response.status == 405
            assert response.content_type == "application/json"
            assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}
