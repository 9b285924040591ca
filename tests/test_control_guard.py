"""What a web page in the operator's browser, or a sloppy client, can make the control API
do: nothing, unless it is the API's own origin writing JSON to a loopback name."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import ClientSession

from abgate.control.serve import embedded
from tests.servers import make_config, raw_request


async def flag(session: ClientSession, control: str) -> float:
    async with session.get(f"{control}/api/flags/exp") as response:
        return float((await response.json())["percentage"])


async def curl(*args: str) -> tuple[int, dict[str, object]]:
    """The real curl, as people and scripts call it: no Content-Type unless they say so."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-w", "\n%{http_code}", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    body, _, status = out.decode().rpartition("\n")
    return int(status), json.loads(body)


async def test_curl_writes_without_a_content_type(agents: dict[str, str]) -> None:
    """`curl -d` labels its body application/x-www-form-urlencoded: neither that nor any
    other Content-Type makes a write unsafe, so the requirements' commands work as written."""
    async with embedded(make_config(agents)) as running:
        url = f"{running.control_url}/api/flags/exp"
        status, body = await curl("-X", "POST", url, "-d", '{"percentage": 20}')
        assert (status, body["percentage"]) == (200, 20)
        status, body = await curl(
            "-X", "POST", url, "-H", "Content-Type: text/plain", "-d", '{"percentage": 30}'
        )
        assert (status, body["percentage"]) == (200, 30)
        status, body = await curl("-X", "POST", url, "-d", "percentage=40")  # a form, not JSON
        assert status == 400
        assert "not valid JSON" in str(body["error"])
        assert running.flags.get("exp").percentage == 30


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({"Sec-Fetch-Site": "cross-site"}, "cross-site write refused (Sec-Fetch-Site: cross-site)"),
        ({"Sec-Fetch-Site": "same-site"}, "cross-site write refused (Sec-Fetch-Site: same-site)"),
        (
            {"Origin": "http://evil.example"},
            'cross-origin write from "http://evil.example" refused',
        ),
        ({"Origin": "null"}, 'cross-origin write from "null" refused'),  # sandboxed, file://
        ({"Sec-Fetch-Site": "same-origin"}, None),
        ({"Sec-Fetch-Site": "none"}, None),  # typed by the user, or a bookmark
        # Sec-Fetch-Site decides when present (Go's rule): the browser's own statement.
        ({"Sec-Fetch-Site": "cross-site", "Origin": "OWN"}, "cross-site write refused"),
    ],
)
async def test_a_write_from_another_site_is_refused(
    session: ClientSession,
    agents: dict[str, str],
    headers: dict[str, str],
    refused: str | None,
) -> None:
    async with embedded(make_config(agents)) as running:
        control = running.control_url
        sent = {k: control if v == "OWN" else v for k, v in headers.items()}
        async with session.post(
            f"{control}/api/flags/exp",
            data=b'{"percentage": 100}',
            headers={"Content-Type": "text/plain", **sent},
        ) as response:
            if refused is None:
                assert response.status == 200
                assert await flag(session, control) == 100
                return
            assert response.status == 403
            assert (await response.json())["error"].startswith(refused)
        assert await flag(session, control) == 10


async def test_the_pages_own_origin_may_write(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents)) as running:
        control = running.control_url
        async with session.post(
            f"{control}/api/flags/exp", json={"percentage": 20}, headers={"Origin": control}
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
