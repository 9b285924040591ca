"""The `make run` stack (scripts/run-demo.sh) as a user drives it: the ML agent stopped and
started again while the stack keeps serving, and a second start refused on busy ports."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from aiohttp import ClientSession, web

from tests.servers import free_port, refused_port

ROOT = Path(__file__).parent.parent
URL = "/api/agent/credit/decide"


def demo_env(tmp_path: Path) -> dict[str, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("proxy", "control", "deterministic", "ml")}
    document = yaml.safe_load((ROOT / "config" / "abgate.yaml").read_text())
    document["proxy"]["listen"] = f"127.0.0.1:{ports['proxy']}"
    document["proxy"]["admin_listen"] = "127.0.0.1:0"
    document["control"]["listen"] = f"127.0.0.1:{ports['control']}"
    document["upstreams"]["deterministic"]["url"] = f"http://127.0.0.1:{ports['deterministic']}"
    document["upstreams"]["ml"]["url"] = f"http://127.0.0.1:{ports['ml']}"
    document["upstreams"]["ml"]["breaker"] = {"open_duration": "200ms"}
    document.setdefault("flags", {})["state_file"] = str(tmp_path / "flags.json")
    config = tmp_path / "abgate.yaml"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    return {
        **os.environ,
        "DEMO_CONFIG": str(config),
        "DEMO_DIR": str(tmp_path / "demo"),
        "DEMO_PROXY_PORT": str(ports["proxy"]),
        "DEMO_CONTROL_PORT": str(ports["control"]),
        "DEMO_DETERMINISTIC_PORT": str(ports["deterministic"]),
        "DEMO_ML_PORT": str(ports["ml"]),
    }


class Demo:
    def __init__(self, proc: asyncio.subprocess.Process, env: dict[str, str]) -> None:
        self.proc, self.env, self.output = proc, env, ""
        self.proxy = f"http://127.0.0.1:{env['DEMO_PROXY_PORT']}"
        self.control = f"http://127.0.0.1:{env['DEMO_CONTROL_PORT']}"
        self._changed = asyncio.Event()

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.output += line.decode(errors="replace")
            self._changed.set()

    async def printed(self, text: str, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while text not in self.output:
                if self.proc.returncode is not None:
                    raise AssertionError(f"the demo ended:\n{self.output}")
                self._changed.clear()
                await self._changed.wait()

    async def agent(self, action: str, kind: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            str(ROOT / "scripts" / "demo-agent.sh"),
            action,
            kind,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return out.decode()


@asynccontextmanager
async def demo(env: dict[str, str]) -> AsyncIterator[Demo]:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(ROOT / "scripts" / "run-demo.sh"),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    running = Demo(proc, env)
    reader = asyncio.create_task(running.read())
    try:
        yield running
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)  # what Ctrl-C does to the whole group
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        await reader


async def decide(session: ClientSession, base: str, user: str) -> tuple[int, Any]:
    async with session.post(f"{base}{URL}", data=b"{}", headers={"X-User-Id": user}) as r:
        await r.read()
        return r.status, r.headers


@asynccontextmanager
async def started_demo(tmp_path: Path) -> AsyncIterator[Demo]:
    """The demo up on fresh ports; ports found free can be taken again before the demo binds
    them (there is no holding a port for another process), so a start that found one busy
    is tried again on others."""
    for attempt in range(3):
        env = demo_env(tmp_path / f"try{attempt}")
        async with demo(env) as running:
            try:
                await running.printed("abgate demo is up")
            except AssertionError:
                if "already in use" in running.output or "did not start" in running.output:
                    continue
                raise
            yield running
            return
    raise AssertionError("the demo found its ports taken three times")


async def test_the_ml_agent_dies_and_comes_back_while_the_stack_serves(
    session: ClientSession, tmp_path: Path
) -> None:
    async with started_demo(tmp_path) as running:
        assert "10% to ML" in running.output
        # The docs call `abgate`: the demo says how to have it on the PATH.
        assert f'export PATH="{ROOT}/.venv/bin:$PATH"' in running.output
        # On the test's own ports, the hints carry them (the scripts read the same variables)
        [hint] = [line for line in running.output.splitlines() if "make demo-rollout" in line]
        port = running.proxy.rsplit(":", 1)[1]
        assert f"DEMO_PROXY_PORT={port} " in hint, hint
        async with session.post(
            f"{running.control}/api/flags/ml-agent-rollout", json={"percentage": 100}
        ) as response:
            assert response.status == 200
        status, headers = await decide(session, running.proxy, "alice")
        assert (status, headers["X-ABGate-Arm"], "X-ABGate-Fallback" in headers) == (
            200,
            "ml",
            False,
        )

        assert "ml agent stopped" in await running.agent("stop", "ml")
        for user in range(30):  # every answer still comes, from the deterministic agent
            status, headers = await decide(session, running.proxy, f"u{user}")
            assert status == 200
            assert "X-ABGate-Fallback" in headers
        await running.printed("ml agent is not running; abgate keeps serving")
        assert f"(restart it with DEMO_PROXY_PORT={port} " in running.output  # its ports too

        assert "ml agent started" in await running.agent("start", "ml")
        await running.printed("ml agent is back")
        users = iter(range(1000, 2000))  # bounded: the breaker's 200 ms wait, then trials
        async with asyncio.timeout(30):
            while True:
                status, headers = await decide(session, running.proxy, f"u{next(users)}")
                assert status == 200
                if "X-ABGate-Fallback" not in headers:
                    break
                await asyncio.sleep(0.05)
        assert headers["X-ABGate-Arm"] == "ml"
    assert not any(tmp_path.glob("try*/demo/*.pid"))  # Ctrl-C stopped the agents too


async def test_a_second_start_on_busy_ports_says_who_holds_them(
    session: ClientSession, tmp_path: Path
) -> None:
    env = demo_env(tmp_path)
    async with demo(env) as first:
        await first.printed("abgate demo is up")
        second = await asyncio.create_subprocess_exec(
            "bash",
            str(ROOT / "scripts" / "run-demo.sh"),
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await second.communicate()
        assert second.returncode == 1
        text = out.decode()
        assert f"port {env['DEMO_PROXY_PORT']} is already in use" in text
        assert "abgate demo is up" not in text
        status, _ = await decide(session, first.proxy, "alice")  # the first one is untouched
        assert status == 200


async def script(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def agent_env(tmp_path: Path, port: int) -> dict[str, str]:
    return {**os.environ, "DEMO_DIR": str(tmp_path / "demo"), "DEMO_DETERMINISTIC_PORT": str(port)}


async def test_agents_are_told_apart_by_port_and_only_an_agent_is_ever_stopped(
    session: ClientSession, tmp_path: Path
) -> None:
    agent = str(ROOT / "scripts" / "demo-agent.sh")
    first, second = agent_env(tmp_path, free_port()), agent_env(tmp_path, free_port())
    code, out = await script(first, agent, "start", "deterministic")
    assert (code, "deterministic agent started" in out) == (0, True), out
    other = await asyncio.create_subprocess_exec("sleep", "60")  # not an agent
    try:
        # The same kind on another port is another agent: started, not "already running".
        code, out = await script(second, agent, "start", "deterministic")
        assert (code, "deterministic agent started" in out) == (0, True), out
        code, out = await script(second, agent, "stop", "deterministic")
        assert f"port {second['DEMO_DETERMINISTIC_PORT']}" in out
        async with session.get(f"http://127.0.0.1:{first['DEMO_DETERMINISTIC_PORT']}/health") as r:
            assert r.status == 200  # the first one still answers

        # A recorded pid that is no longer that agent (reused, or another port's) is not it.
        third = agent_env(tmp_path, free_port())
        pidfile = tmp_path / "demo" / f"deterministic-{third['DEMO_DETERMINISTIC_PORT']}.pid"
        pidfile.write_text(f"{other.pid}\n")
        code, out = await script(third, agent, "status", "deterministic")
        assert (code, "not running" in out) == (1, True), out
        code, out = await script(third, agent, "stop", "deterministic")
        assert "not running" in out
        assert other.returncode is None
        assert not pidfile.exists()
        code, out = await script(first, agent, "status", "deterministic")
        assert (code, f"port {first['DEMO_DETERMINISTIC_PORT']}" in out) == (0, True), out
    finally:
        other.kill()
        await other.wait()
        await script(first, agent, "stop", "deterministic")
    assert not any((tmp_path / "demo").glob("*.pid"))


async def test_demo_rollout_says_which_agent_did_not_answer(tmp_path: Path) -> None:
    async def health(request: web.Request) -> web.Response:
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    control = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        with refused_port() as nobody:
            env = {
                **agent_env(tmp_path, nobody),
                "ABGATE_CONTROL_URL": control,
                "DEMO_SHADOW_SECONDS": "1",
            }
            code, out = await script(env, str(ROOT / "scripts" / "demo-rollout.sh"))
    finally:
        await runner.cleanup()
    assert code == 1
    assert (
        f"demo-rollout: the deterministic agent did not answer at "
        f"http://127.0.0.1:{nobody}/admin/behaviour" in out
    ), out
