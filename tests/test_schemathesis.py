"""schemathesis against a real `abgate run` over the whole OpenAPI document: every route the
document describes (a parity test keeps it complete) answers as it says, never a 5xx, errors
JSON. Bounded and repeatable: a fixed seed, a few dozen cases per operation, one worker.

Every check runs, status-code conformance and the refusal of invalid requests included,
but one: positive_data_acceptance, since a schema cannot know the running config (an
experiment name that exists, an arm of it, a declared metric): such input is valid by the
schema and rightly refused with a 400 naming the field. Two expectations are widened, both
documented answers: an invalid body too large to read is refused with 413 (not only 400),
and the health endpoints answer 503 while a component is unhealthy (the fuzzer forces a
breaker open)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from scripts.demo_agent import create_app
from tests.processes import abgate, write_config
from tests.servers import serve_app

ROOT = Path(__file__).parent.parent
TOKEN = "schemathesis-token"
SETTINGS = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422"]

[[operations]]
include-path-regex = "^/health/(aggregate|ready)$"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
"""


async def test_the_whole_control_api_holds_to_its_openapi_document(tmp_path: Path) -> None:
    async with (
        serve_app(create_app("deterministic")) as control,
        serve_app(create_app("ml", seed=1)) as treatment,
    ):
        config = write_config(
            tmp_path / "abgate.yaml",
            {
                "proxy": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
                "control": {"listen": "127.0.0.1:0"},
                "flags": {"state_file": None},
                "upstreams": {"deterministic": {"url": control}, "ml": {"url": treatment}},
                "routes": [{"prefix": "/api/agent/", "experiment": "ml-agent-rollout"}],
                "experiments": {
                    "ml-agent-rollout": {
                        "control": "deterministic",
                        "treatment": "ml",
                        "percentage": 10,
                        "sticky": [{"header": "X-User-Id"}],
                        "metrics": {"accuracy": {"type": "binary", "direction": "higher"}},
                    }
                },
            },
        )
        (tmp_path / "schemathesis.toml").write_text(SETTINGS)  # st reads it from its cwd
        os.environ["ABGATE_CONTROL_TOKEN"] = TOKEN  # writes without it must be 401
        try:
            async with abgate(
                "run", "--config", str(config), expect={"proxy": 1, "control API": 1}
            ) as process:
                api = process.url("control API")
                st = await asyncio.create_subprocess_exec(
                    str(Path(sys.executable).parent / "st"),
                    "run",
                    f"{api}/api/openapi.json",
                    "-H",
                    f"Authorization: Bearer {TOKEN}",
                    "--checks",
                    "all",
                    "--exclude-checks",
                    "positive_data_acceptance",
                    "--max-examples",
                    "20",
                    "--seed",
                    "1",
                    "--workers",
                    "1",
                    # No timed assertion: under `make test-busy` a reload (its parse in a
                    # process of its own) took 17 s against schemathesis' 10 s default.
                    "--request-timeout",
                    "120",
                    "--max-response-time",
                    "120",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=tmp_path,
                    env={**os.environ, "NO_COLOR": "1"},
                )
                output, _ = await asyncio.wait_for(st.communicate(), 300)
        finally:
            del os.environ["ABGATE_CONTROL_TOKEN"]
    text = output.decode(errors="replace")
    assert st.returncode == 0, text[-6000:]
    generated = re.search(r"(\d+) generated", text)
    assert generated is not None, text[-2000:]
    assert int(generated.group(1)) >= 300, text[-2000:]  # a few hundred cases, really sent
