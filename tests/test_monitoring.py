"""The monitoring assets against a real Prometheus: it scrapes abgate, every dashboard query
parses and runs, and the alert rules load."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from aiohttp import ClientSession

from control.serve import embedded
from tests.servers import free_port, make_config

MONITORING = Path(__file__).parent.parent / "monitoring"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is not installed; `make test-servers` installs it")
        pytest.skip(
            f"{tool} is not installed (run `make test-servers`); tests that need it "
            "are skipped outside CI only"
        )
    return path


async def test_prometheus_scrapes_abgate_and_dashboard_queries_run(
    tmp_path: Path, session: ClientSession, agents: dict[str, str]
) -> None:
    prometheus = require("prometheus")
    async with embedded(make_config(agents, percentage=50)) as running:
        for user in range(40):
            async with session.get(
                f"{running.proxy_url}/api/agent/a/decide", headers={"X-User-Id": f"u{user}"}
            ) as response:
                assert response.status == 200
        config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
        config["global"]["scrape_interval"] = "1s"
        target = running.control_url.removeprefix("http://")
        config["scrape_configs"][0]["static_configs"][0]["targets"] = [target]
        shutil.copy(MONITORING / "alerts.yml", tmp_path / "alerts.yml")
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        api = f"http://127.0.0.1:{port}/api/v1"
        try:
            total = await wait_for_value(session, api, "sum(abgate_requests_total)")
            assert total == 40
            rules = await get_json(session, f"{api}/rules")
            names = {rule["name"] for group in rules["data"]["groups"] for rule in group["rules"]}
            assert names == {
                "ABGateArmErrorRateHigh",
                "ABGateUpstreamErrors",
                "ABGateOverheadHigh",
                "ABGateBreakerOpen",
                "ABGateFlagStoreDown",
                "ABGateSampleRatioMismatch",
                "ABGateStatisticsEvaluationFailing",
                "ABGateClientsRefused",
                "ABGateUpstreamPoolSaturated",
            }
            for group in rules["data"]["groups"]:  # every rule's PromQL runs, and is healthy
                for rule in group["rules"]:
                    result = await get_json(session, f"{api}/query", query=rule["query"])
                    assert result["status"] == "success", (rule["name"], result)
                    assert rule["health"] in ("ok", "unknown"), rule
            # The series the alerts watch exist in a plain scrape (counters of failures that
            # have not happened, like evaluation errors, have no series until they do).
            for metric in (
                "abgate_client_refusals_total",
                "abgate_upstream_connections",
                "abgate_breaker_state",
                "abgate_flag_store_connected",
                "abgate_stats_srm_p_value",
                "abgate_proxy_overhead_seconds_bucket",
            ):
                result = await get_json(session, f"{api}/query", query=f"count({metric})")
                assert result["data"]["result"], metric
            dashboard = json.loads((MONITORING / "grafana" / "abgate-dashboard.json").read_text())
            for panel in dashboard["panels"]:
                for target in panel["targets"]:
                    query = target["expr"].replace("$experiment", ".*")
                    result = await get_json(session, f"{api}/query", query=query)
                    assert result["status"] == "success", (panel["title"], result)
        finally:
            proc.terminate()
            await proc.wait()


async def get_json(session: ClientSession, url: str, **params: str) -> dict:  # type: ignore[type-arg]
    # The shared session does not decompress (proxy tests check raw bodies): ask for identity.
    async with session.get(url, params=params, headers={"Accept-Encoding": "identity"}) as response:
        return await response.json()  # type: ignore[no-any-return]


async def wait_for_value(session: ClientSession, api: str, query: str) -> float:
    """Poll Prometheus until the first scrape has landed (it starts empty)."""
    async with asyncio.timeout(60):
        while True:
            try:
                result = await get_json(session, f"{api}/query", query=query)
                if result.get("data", {}).get("result"):
                    return float(result["data"]["result"][0]["value"][1])
            except OSError:
                pass  # not listening yet
            await asyncio.sleep(0.2)
