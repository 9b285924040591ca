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

from abgate.control.serve import embedded
from tests.servers import free_port, make_config

MONITORING = Path(__file__).parent.parent / "monitoring"
DASHBOARDS = MONITORING / "grafana" / "dashboards"


def test_dashboards_are_current_and_well_formed() -> None:
    from monitoring.grafana.dashboards import DASHBOARDS as BUILDERS
    from monitoring.grafana.dashboards import render

    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(BUILDERS)
    for name, build in BUILDERS.items():
        assert (DASHBOARDS / name).read_text() == render(build), (
            f"{name} is stale: run python -m monitoring.grafana.dashboards"
        )
    overview = json.loads((DASHBOARDS / "ab-testing-overview.json").read_text())
    assert len(overview["panels"]) == 12
    assert "Business Impact" in {p["title"] for p in overview["panels"]}
    control = json.loads((DASHBOARDS / "ab-testing-control.json").read_text())
    assert {"type": "stat", "title": "Traffic Split"}.items() <= next(
        p for p in control["panels"] if p["title"] == "Traffic Split"
    ).items()
    for name in BUILDERS:
        dashboard = json.loads((DASHBOARDS / name).read_text())
        assert dashboard["refresh"] == "10s"
        assert [v["name"] for v in dashboard["templating"]["list"]].count("datasource") == 1
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        cells = set()
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, (name, panel["title"])  # no overlap
                    cells.add((x, y))
            assert panel["targets"]
            assert all(t["expr"] for t in panel["targets"])


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
    from tests.redis_server import redis_server

    prometheus = require("prometheus")
    async with (
        redis_server(tmp_path) as redis,
        embedded(make_config(agents, percentage=50, flags={"redis_url": redis.url})) as running,
    ):
        arms: dict[str, int] = {}
        for user in range(40):
            async with session.get(
                f"{running.proxy_url}/api/agent/a/decide", headers={"X-User-Id": f"u{user}"}
            ) as response:
                assert response.status == 200
                arm = response.headers["X-ABGate-Arm"]
                arms[arm] = arms.get(arm, 0) + 1
        outcomes = [
            {
                "experiment": "exp",
                "arm": arm,
                "metric": "accuracy",
                "value": i % 3 != 0,
                "user": f"{arm}-{i}",
            }
            for arm in arms
            for i in range(12)
        ]
        async with session.post(f"{running.control_url}/api/outcomes", json=outcomes) as response:
            assert response.status == 200
        await running.worker.evaluate_all()
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
                "ABGateDecisionLatencyHigh",
                "ABGateRolloutRolledBack",
                "ABGateRolloutEscalated",
                "ABGateHistoryDropping",
                "ABGateHistoryStoreDown",
                "ABGateRedisSlow",
                # recording rules: the requirements' names
                "node_cpu_utilization",
                "node_memory_utilization",
                "postgresql_queries_duration_p95",
                "redis_commands_duration_p95",
                "abgate_decision_latency_p95_ms",
                "ab_testing_decision_latency",
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
                "abgate_redis_command_seconds_bucket",
                "abgate_redis_server_seconds_bucket",  # Redis' own time: the p95 reads it
            ):
                result = await get_json(session, f"{api}/query", query=f"count({metric})")
                assert result["data"]["result"], metric
            # Every Redis command is timed, by name: flag reads, pipelines, scripts.
            result = await get_json(
                session,
                f"{api}/query",
                query="count by (command) (abgate_redis_command_seconds_count)",
            )
            commands = {r["metric"]["command"] for r in result["data"]["result"]}
            assert {"pipeline", "hgetall"} <= commands, commands
            returned: dict[str, bool] = {}
            for path in sorted(DASHBOARDS.glob("*.json")):
                for panel in json.loads(path.read_text())["panels"]:
                    for target in panel["targets"]:
                        query = target["expr"].replace("$experiment", ".*")
                        result = await get_json(session, f"{api}/query", query=query)
                        assert result["status"] == "success", (panel["title"], result)
                        if result["data"]["result"]:
                            returned[panel["title"]] = True
            # The panels the requirements name show data from this run (rates need two
            # scrapes, so the rate panels are only checked to run).
            for title in (
                "Traffic Split",
                "Traffic split",
                "Business Impact",
                "Samples per arm against samples needed",
            ):
                assert returned.get(title), title
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
