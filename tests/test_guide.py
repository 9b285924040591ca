"""The operations guide (docs/self-learning-agents/ab-testing-guide.md) stays true: its
configuration passes `abgate check-config`, its rollout and rollback commands run, in order,
against a real `abgate run` with that configuration, `make monitoring` starts and stops its
stack, and every other command it shows is named here with the test that runs it. Every alert rule
links to the guide's section for it."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession

from scripts.demo_agent import create_app
from tests.processes import abgate, write_config
from tests.servers import free_port, serve_app

ROOT = Path(__file__).parent.parent
GUIDE = ROOT / "docs" / "self-learning-agents" / "ab-testing-guide.md"
ALERTS = ROOT / "monitoring" / "alerts.yml"

# Commands of the guide run by this module, in the order the guide gives them.
ROLLOUT_COMMANDS = (
    'abgate rollout start my-agent --reason "model v7"',
    "abgate rollout status my-agent --watch",
    "abgate rollout approve my-agent --stage 50",
    "abgate rollout report my-agent",
    "scripts/emergency-rollback.sh my-agent",
    'abgate rollout abort my-agent --reason "incident 123"',
)
RUN_HERE = {*ROLLOUT_COMMANDS, "make monitoring"}
# Commands run elsewhere: where, and a string that shows it runs them there.
ELSEWHERE = {
    "make run": ("tests/test_demo.py", "run-demo.sh"),
    "make test": (".ci/run", "make test"),
    "scripts/load-testing/ml-infrastructure-suite/run.sh --duration 300s "
    "--requests-per-second 100": ("tests/test_load_test.py", "ml-infrastructure-suite/run.sh"),
}


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)


def commands() -> list[str]:
    """Each line of the guide's shell blocks, comments dropped, as one normalised string."""
    out = []
    for block in blocks("sh"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(shlex.join(words).replace("'", '"'))
    return out


def test_every_command_in_the_guide_is_run_by_a_test() -> None:
    shown = commands()
    assert shown, "the guide has no shell blocks?"
    unchecked = [c for c in shown if c not in RUN_HERE and c not in ELSEWHERE]
    assert not unchecked, f"commands in the guide no test runs: {unchecked}"
    for command, (path, marker) in ELSEWHERE.items():
        assert marker in (ROOT / path).read_text(), (command, path)
    assert (ROOT / "Makefile").read_text().count("scripts/monitoring.sh") == 1
    assert "scripts/run-demo.sh" in (ROOT / "Makefile").read_text()
    assert [c for c in shown if c in ROLLOUT_COMMANDS] == list(ROLLOUT_COMMANDS)


def test_every_alert_links_to_its_section_of_the_guide() -> None:
    headings = {
        "#" + re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", GUIDE.read_text(), flags=re.MULTILINE)
    }
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 15
    for rule in alerts:
        link = rule["annotations"]["runbook_url"]
        assert link == f"docs/self-learning-agents/ab-testing-guide.md#{rule['alert'].lower()}", (
            rule["alert"]
        )
        assert link.removeprefix("docs/self-learning-agents/ab-testing-guide.md") in headings, rule[
            "alert"
        ]


def guide_config(control: str, treatment: str, state: Path) -> dict[str, Any]:
    """The guide's experiment, as it is written, with this test's agents and listeners."""
    (experiments,) = [d for d in map(yaml.safe_load, blocks("yaml")) if "experiments" in d]
    return {
        "proxy": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
        "control": {"listen": "127.0.0.1:0"},
        "flags": {"state_file": str(state)},
        "upstreams": {"deterministic": {"url": control}, "ml": {"url": treatment}},
        "routes": [{"prefix": "/api/agent/", "experiment": "my-agent"}],
        **experiments,
    }


def test_the_guides_production_settings_are_valid() -> None:
    """The production section's Redis (Sentinel, ACL, TLS) and PostgreSQL settings, as
    written, pass validation (the secrets they name are read only when connecting)."""
    from abgate.config import parse_config

    (production,) = [d for d in map(yaml.safe_load, blocks("yaml")) if "flags" in d]
    document = {
        **production,
        "upstreams": {"deterministic": {"url": "http://127.0.0.1:9001"}},
        "routes": [{"prefix": "/", "upstream": "deterministic"}],
    }
    config = parse_config(yaml.safe_dump(document), "guide")
    assert config.flags.redis is not None
    assert config.flags.redis.sentinel is not None
    assert config.history.password is not None
    assert "verify-full" in (config.history.postgres_url or "")


async def run(
    command: str, cwd: Path, env: dict[str, str], *, until_first_line: bool = False
) -> tuple[int, str]:
    """Exit status and output; with `until_first_line`, a command that runs until stopped
    is stopped once it has printed a line (status -1)."""
    words = shlex.split(command)
    if words[0] == "abgate":
        words = [sys.executable, "-m", "abgate.control.cli", *words[1:]]
    elif words[0].startswith("scripts/"):
        words = ["bash", str(ROOT / words[0]), *words[1:]]
    proc = await asyncio.create_subprocess_exec(
        *words,
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        if until_first_line:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            proc.kill()
            rest, _ = await proc.communicate()
            code = -1 if proc.returncode == -signal.SIGKILL else proc.returncode
            assert code is not None
            return code, (line + rest).decode()
        output, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, output.decode()


async def test_the_guides_configuration_and_commands_work(
    session: ClientSession, tmp_path: Path
) -> None:
    async with (
        serve_app(create_app("deterministic")) as control,
        serve_app(create_app("ml", seed=1)) as treatment,
    ):
        config = write_config(
            tmp_path / "abgate.yaml", guide_config(control, treatment, tmp_path / "s.json")
        )
        code, output = await run(f"abgate check-config {config}", tmp_path, dict(os.environ))
        assert code == 0, output
        expect = {"proxy": 1, "control API": 1}
        async with abgate("run", "--config", str(config), expect=expect) as process:
            env = {**os.environ, "ABGATE_CONTROL_URL": process.url("control API")}
            results = {}
            for command in ROLLOUT_COMMANDS:
                follows = "--watch" in command
                results[command] = await run(command, tmp_path, env, until_first_line=follows)
            start, watch, approve, report, rollback, abort = results.values()
            assert start[0] == 0, start
            assert watch[0] == -1, watch  # it follows the rollout until stopped
            assert " running 5% " in watch[1], watch
            # Nothing waits for approval at the first stage: refused, saying why (not a
            # usage error, which would mean the guide's syntax is wrong).
            assert approve[0] == 1, approve
            assert "approv" in approve[1], approve
            assert report[0] == 0, report
            assert (tmp_path / "reports" / "my-agent-business-impact.md").exists()
            assert rollback[0] == 0, rollback
            assert abort[0] == 0, abort
            async with session.get(
                process.url("control API") + "/api/rollouts/my-agent"
            ) as response:
                assert (await response.json())["state"] == "aborted"
            async with session.get(process.url("control API") + "/api/flags/my-agent") as response:
                assert (await response.json())["percentage"] == 0


async def test_make_monitoring_starts_its_stack_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    from tests.postgres_server import postgres_server
    from tests.redis_server import redis_server
    from tests.test_monitoring import require

    require("prometheus")
    for exporter in (
        "prometheus-node-exporter",
        "prometheus-redis-exporter",
        "prometheus-postgres-exporter",
    ):
        require(exporter)
    ports = {name: free_port() for name in ("PROMETHEUS", "NODE", "REDIS", "POSTGRES")}
    async with redis_server(tmp_path) as redis, postgres_server() as postgres:
        env = {
            **os.environ,
            "MONITORING_DIR": str(tmp_path / "monitoring"),
            "PROMETHEUS_LISTEN": f"127.0.0.1:{ports['PROMETHEUS']}",
            "NODE_EXPORTER_LISTEN": f"127.0.0.1:{ports['NODE']}",
            "REDIS_EXPORTER_LISTEN": f"127.0.0.1:{ports['REDIS']}",
            "POSTGRES_EXPORTER_LISTEN": f"127.0.0.1:{ports['POSTGRES']}",
            "REDIS_ADDR": redis.url,
            "DATA_SOURCE_NAME": postgres.url + "?sslmode=disable",
        }
        proc = await asyncio.create_subprocess_exec(
            "bash",
            str(ROOT / "scripts" / "monitoring.sh"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        printed: list[str] = []
        try:
            async with asyncio.timeout(60):
                while not printed or "Ctrl-C stops them." not in printed[-1]:
                    printed.append((await proc.stdout.readline()).decode())
                    assert printed[-1], "".join(printed)
            assert sum("http://127.0.0.1:" in line for line in printed) == 4, printed
            async with ClientSession() as session:
                for port, wanted in (
                    (ports["PROMETHEUS"], None),
                    (ports["NODE"], "node_cpu_seconds_total"),
                    (ports["REDIS"], "redis_up 1"),
                    (ports["POSTGRES"], "pg_up 1"),
                ):
                    path = "/-/ready" if wanted is None else "/metrics"
                    await wait_for(session, f"http://127.0.0.1:{port}{path}", wanted)
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
            async with asyncio.timeout(30):
                assert await proc.wait() in (0, 130)
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    for port in ports.values():  # every process of the stack is gone
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)


async def wait_for(session: ClientSession, url: str, wanted: str | None) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                async with session.get(url) as response:
                    text = await response.text()
                    if response.status == 200 and (wanted is None or wanted in text):
                        return
            except OSError:
                pass  # not listening yet
            await asyncio.sleep(0.2)
