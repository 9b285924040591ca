"""The control API's edges, each once a 500 with a traceback or a wrong answer: bodies too
deep, numbers out of range, text that is not Unicode, a bearer token that is not UTF-8, an
approval of a stage beyond any double; over-precise percentages; credentials in an upstream
URL; a rollback whose convergence nobody can see; Flagger hooks with a body that is not
Flagger's; the control page's script policy."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from abgate.config import load_config
from abgate.control.serve import Embedded, embedded
from tests.cut_proxy import cut_proxy
from tests.processes import config_document, write_config
from tests.redis_server import redis_server
from tests.servers import make_config
from tests.test_rollout import FAST

JSON = {"Content-Type": "application/json"}


async def post_raw(
    session: ClientSession, running: Embedded, path: str, body: bytes, **headers: str
) -> tuple[int, Any]:
    async with session.post(
        running.control_url + path, data=body, headers={**JSON, **headers}
    ) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/api/flags", b"[" * 100_000, 413, "nested too deep"),
        ("/api/flags/exp", b'{"percentage": ' + b"[" * 40 + b"]" * 40 + b"}", 413, "too deep"),
        ("/api/flags/exp", b'{"percentage": 1e9999999999999999999}', 400, "out of range"),
        ("/api/flags/exp", b'{"percentage": 10, "reason": "\\ud800"}', 400, "lone surrogate"),
        ("/api/flags/exp", b'{"percentage": 10.000000000000000000000000000001}', 400, "two dec"),
        ("/api/flags/exp", b'{"percentage": 1e-999999999}', 400, "at most two decimals"),
        ("/api/flags", b'{"flags": {"exp": 0.001}}', 400, "at most two decimals"),
        ("/api/flags/exp", b'{"percentage": 10, "expected_version": 1e308}', 400, "from 1 to"),
        ("/api/flags/exp", b'{"percentage": 10, "expected_version": "1"}', 400, "the string"),
        ("/api/flags", b'{"flags": {"exp": 10}, "expected_versions": {"exp": 1e308}}', 400, "to"),
        ("/api/outcomes", b"[" * 100_000, 413, "nested too deep"),
        ("/api/rollouts/exp/approve", b'{"stage": -5.38e307}', 400, "stage: "),
        ("/api/rollouts/exp/gates/rollback", b"not json", 400, "not valid JSON"),
        ("/api/rollouts/exp/gates/rollback", b'{"name": 5}', 400, "name: expected a string"),
        ("/api/rollouts/exp/gates/event", b'{"spam": 1}', 400, "unknown field"),
        ("/api/incidents", b'{"experiment": "exp", "description": "' + b"x" * 501 + b'"}', 400, ""),
    ],
)
async def test_each_edge_is_a_json_4xx_never_a_500(
    session: ClientSession,
    agents: dict[str, str],
    path: str,
    body: bytes,
    status: int,
    says: str,
) -> None:
    config = make_config(
        agents, percentage=20, experiment={"rollout": {**FAST, "stages": [50, 100]}}
    )
    async with embedded(config) as running:
        answer = await post_raw(session, running, path, body)
        flag = running.flags.get("exp")
    assert answer[0] == status, answer
    assert says in answer[1]["error"], answer
    assert (flag.percentage, flag.version) == (20, 1)  # nothing was written


async def test_an_exact_percentage_and_a_whole_version_written_as_a_float_are_taken(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents, percentage=20)) as running:
        status, flag = await post_raw(
            session, running, "/api/flags/exp", b'{"percentage": 12.50, "expected_version": 1.0}'
        )
    assert status == 200, flag
    assert (flag["percentage"], flag["version"]) == (12.5, 2)


async def test_a_bearer_token_that_is_not_utf8_is_a_401(agents: dict[str, str]) -> None:
    async with embedded(make_config(agents), token="s3cret") as running:
        host, port = running.control_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /api/flags/exp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            b"\r\nAuthorization: Bearer \xff\xfe\r\nContent-Length: 17\r\nConnection: close"
            b'\r\n\r\n{"percentage": 1}'
        )
        answer = await reader.read()
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), answer
    assert b"bearer token" in body


async def test_credentials_in_an_upstream_url_are_masked_and_check_config_says_so(
    session: ClientSession, tmp_path: Path
) -> None:
    """Such credentials are never sent (abgate makes no Authorization from a URL): check-config
    says so, and GET /api/config (no token needed) shows them masked, as the Redis URL's."""
    path = write_config(
        tmp_path / "abgate.yaml", config_document("http://admin:hunter2@127.0.0.1:9")
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "abgate.control.cli", "check-config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await proc.communicate())[0].decode()
    assert proc.returncode == 0, output
    assert "upstreams.echo.url: the credentials in this URL are not sent" in output
    assert "hunter2" not in output
    async with (
        embedded(load_config(str(path)), config_path=str(path)) as running,
        session.get(running.control_url + "/api/config") as response,
    ):
        assert response.status == 200
        exported = (await response.json())["config"]
    assert exported["upstreams"]["echo"]["url"] == "http://admin:***@127.0.0.1:9"
    assert "hunter2" not in str(exported)


async def test_a_rollback_whose_convergence_nobody_can_see_says_unknown(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    """The write lands; then Redis is gone before the instance registry can be read: the
    answer says convergence is unknown, not "converged" with no instance seen."""
    async with redis_server(tmp_path) as redis, cut_proxy(redis.port) as cut:
        config = make_config(
            agents, percentage=30, flags={"redis_url": cut.url, "heartbeat_interval": "200ms"}
        )
        async with embedded(config) as running:
            cut.arm(b"ZREMRANGEBYSCORE", "request", sever=True)
            status, answer = await post_raw(
                session, running, "/api/rollback", b'{"experiments": ["exp"], "timeout": 0.5}'
            )
    assert status == 200, answer
    assert answer["converged"] is None
    assert "instance registry is unreachable" in answer["convergence_unknown"]
    assert answer["flags"][0]["percentage"] == 0


async def test_the_control_page_runs_no_inline_script(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents)) as running:
        async with session.get(running.control_url + "/ui") as response:
            policy = response.headers["Content-Security-Policy"]
            html = await response.text()
        async with session.get(running.control_url + "/ui/app.js") as response:
            assert response.status == 200
            assert response.content_type == "text/javascript"
            script = await response.text()
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert "<script>" not in html
    assert '<script src="/ui/app.js"></script>' in html
    assert "refresh();" in script
