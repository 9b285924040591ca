"""`abgate flags ...` and scripts/emergency-rollback.sh against a running control API."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import sys
from pathlib import Path

from abgate.control.serve import embedded
from tests.servers import make_config, refused_port

ROOT = Path(__file__).parent.parent


async def run(*command: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """A subprocess that does not block the event loop serving the API it calls."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def flags(
    url: str, *args: str, token: str = "t0k", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    return await run(
        sys.executable,
        "-m",
        "abgate.control.cli",
        "flags",
        "--url",
        url,
        "--token",
        token,
        *args,
        env=env,
    )


async def test_flags_commands(tmp_path: Path, agents: dict[str, str]) -> None:
    async with embedded(make_config(agents), token="t0k") as running:
        url = running.control_url
        # No login name in the environment: the actor is still a person, from getpass.
        nameless = {name: "" for name in ("LOGNAME", "USER", "LNAME", "USERNAME")}
        code, out, _ = await flags(url, "set", "exp", "25", "--reason", "ramp up", env=nameless)
        assert (code, out) == (0, "exp: 25% (version 2)\n")
        code, out, _ = await flags(url, "list")
        assert code == 0
        assert out.startswith(f"exp\t25%\tv2\tcli@{pwd.getpwuid(os.getuid()).pw_name}\t")
        code, out, _ = await flags(url, "get", "exp")
        assert json.loads(out)["percentage"] == 25
        backup = tmp_path / "flags.json"
        assert (await flags(url, "export", str(backup)))[0] == 0
        assert (await flags(url, "set", "exp", "80"))[0] == 0
        code, out, _ = await flags(url, "import", str(backup))
        assert (code, out) == (0, "imported 1 flag(s)\n")
        assert running.flags.get("exp").percentage == 25  # restored ...
        assert running.flags.get("exp").version == 4  # ... as a new, audited version
        code, out, _ = await flags(url, "history", "exp")
        assert [line.split("\t")[:2] for line in out.splitlines()] == [
            ["v4", "25%"],
            ["v3", "80%"],
            ["v2", "25%"],
        ]
        assert out.splitlines()[0].endswith(f"import from {backup}")

        code, _, err = await flags(url, "set", "exp", "30", token="wrong")
        assert code == 1
        assert "401 missing or wrong bearer token" in err
        code, _, err = await flags(url, "set", "exp", "300")
        assert code == 1
        assert 'percentage must be a number from 0 to 100, got "300"' in err
        code, _, err = await flags(url, "set", "exp", "nan")
        assert code == 1
        assert 'percentage must be a number from 0 to 100, got "nan"' in err
        code, out, _ = await flags(url, "history", "exp")
        assert re.search(r"\t\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00\t", out)
        (tmp_path / "garbage.json").write_text("{not json")
        code, _, err = await flags(url, "import", str(tmp_path / "garbage.json"))
        assert code == 1
        assert f"{tmp_path / 'garbage.json'} is not an `abgate flags export` file" in err
        code, _, err = await flags(url, "get", "nope")
        assert (code, err.strip()) == (
            1,
            'abgate flags: GET /api/flags/nope: 404 unknown flag "nope"',
        )
    with refused_port() as port:  # held bound, never listening: nothing can answer there
        code, _, err = await flags(f"http://127.0.0.1:{port}", "list")
    assert code == 1
    assert "cannot reach the control API" in err


async def test_emergency_rollback_script(agents: dict[str, str]) -> None:
    script = str(ROOT / "scripts" / "emergency-rollback.sh")
    async with embedded(make_config(agents, percentage=60), token="t0k") as running:
        env = {"ABGATE_CONTROL_URL": running.control_url, "ABGATE_CONTROL_TOKEN": "t0k"}
        code, out, err = await run("bash", script, "exp", env=env)
        assert code == 0, err
        assert out.startswith("rollback of exp=v2: converged in ")
        assert "  ok " in out
        assert running.proxy_url in out
        assert running.flags.get("exp").percentage == 0
        code, out, _ = await run("bash", script, "missing", env=env)
        assert code == 1
        assert out.strip() == 'rollback failed (404): unknown flag "missing"'
    with refused_port() as port:
        code, _, err = await run(
            "bash", script, env={"ABGATE_CONTROL_URL": f"http://127.0.0.1:{port}"}
        )
    assert code == 1
    assert "cannot reach" in err
