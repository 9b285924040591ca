"""Experiments through the real proxy and demo agents: split ratio, stickiness, monotonic
raising through the control API, routing headers and metrics."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession

from abgate.control.serve import embedded
from tests.servers import make_config

URL = "/api/agent/credit/decide"


async def arm_of(session: ClientSession, base: str, user: str | None) -> str:
    headers = {"X-User-Id": user} if user is not None else {}
    async with session.post(f"{base}{URL}", data=b'{"amount": 10}', headers=headers) as response:
        assert response.status == 200
        body = orjson.loads(await response.read())
        assert response.headers["X-ABGate-Experiment"] == "exp"
        arm = response.headers["X-ABGate-Arm"]
        # The arm named in the header is the agent that answered.
        assert body["source"] == ("ml" if arm == "treatment" else "deterministic")
        return arm


async def set_percentage(session: ClientSession, control: str, value: float) -> None:
    async with session.post(
        f"{control}/api/flags/exp", json={"percentage": value, "reason": "test"}
    ) as response:
        assert response.status == 200, await response.text()


async def test_random_split_matches_percentage(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents, percentage=10)) as running:
        arms = Counter([await arm_of(session, running.proxy_url, None) for _ in range(1000)])
    assert 80 <= arms["treatment"] <= 120, arms  # seeded (proxy.random_seed): deterministic


async def test_sticky_users_and_monotonic_rollout(
    session: ClientSession, agents: dict[str, str]
) -> None:
    users = [f"user-{i}" for i in range(200)]
    async with embedded(make_config(agents, percentage=5)) as running:
        previous: set[str] = set()
        for percentage in (5, 25, 50, 75, 100):
            await set_percentage(session, running.control_url, percentage)
            treated = set()
            for user in users:
                first = await arm_of(session, running.proxy_url, user)
                assert await arm_of(session, running.proxy_url, user) == first  # sticky
                if first == "treatment":
                    treated.add(user)
            assert previous <= treated, "raising the percentage moved a user back"
            assert abs(len(treated) / len(users) - percentage / 100) <= 0.08
            previous = treated
        assert previous == set(users)
        await set_percentage(session, running.control_url, 0)  # rollback
        arms = {await arm_of(session, running.proxy_url, user) for user in users}
        assert arms == {"control"}


async def test_client_ip_when_key_missing(session: ClientSession, agents: dict[str, str]) -> None:
    config = make_config(agents, percentage=50, experiment={"when_missing": "client_ip"})
    async with embedded(config) as running:
        arms = {await arm_of(session, running.proxy_url, None) for _ in range(30)}
    assert len(arms) == 1  # every request from 127.0.0.1 lands in the same arm


async def test_metrics_count_requests_per_arm(
    session: ClientSession, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents, percentage=50)) as running:
        arms = Counter([await arm_of(session, running.proxy_url, f"u{i}") for i in range(100)])
        async with session.get(f"{running.control_url}/metrics") as response:
            text = await response.text()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    for arm in ("control", "treatment"):
        key = (
            f'abgate_requests_total{{arm="{arm}",experiment="exp",status_class="2xx",'
            f'upstream="{arm}"}}'
        )
        assert samples[key] == arms[arm]
        count = f'ab_testing_decision_latency_seconds_count{{arm="{arm}",experiment="exp"}}'
        assert samples[count] == arms[arm]
    assert samples["abgate_proxy_overhead_seconds_count"] == 100
    assert samples['abgate_experiment_percentage{experiment="exp"}'] == 50
    assert "process_resident_memory_bytes" in samples


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (
            b"{not json",
            400,
            "request body is not valid JSON at line 1, column 2: expecting property name "
            "enclosed in double quotes",
        ),
        (b"[]", 400, "request body must be a JSON object"),
        (b"{}", 400, "percentage: required (a number from 0 to 100)"),
        (b'{"percentage": 101}', 400, "percentage: must be between 0 and 100, got 101"),
        (b'{"percentage": -0.5}', 400, "percentage: must be between 0 and 100, got -0.5"),
        (
            b'{"percentage": "ten"}',
            400,
            'percentage: expected a number from 0 to 100, got a string ("ten")',
        ),
        (
            b'{"percentage": "10"}',
            400,
            'percentage: expected a number from 0 to 100, got a string ("10")',
        ),
        (
            b'{"percentage": true}',
            400,
            "percentage: expected a number from 0 to 100, got a boolean (true)",
        ),
        (
            b'{"percentage": 1.234}',
            400,
            "percentage: at most two decimals (0.01% steps), got 1.234",
        ),
        (
            b'{"percentage": 99.99999999999999999}',
            400,  # a float would round it to 100 first
            "percentage: at most two decimals (0.01% steps), got 99.99999999999999999",
        ),
        (b'{"percentage": NaN}', 400, "request body is not valid JSON: NaN is not a JSON number"),
        (
            b'{"percentage": 5, "colour": 1}',
            400,
            "unknown field(s): colour (expected: expected_version, percentage, reason)",
        ),
    ],
)
async def test_flag_api_rejects_bad_input(
    session: ClientSession, agents: dict[str, str], body: bytes, status: int, error: str
) -> None:
    async with embedded(make_config(agents)) as running:
        async with session.post(
            f"{running.control_url}/api/flags/exp",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.status == status
            assert (await response.json())["error"] == error
        async with session.get(f"{running.control_url}/api/flags/exp") as response:
            flag = await response.json()
    assert flag["percentage"] == 10  # nothing half-written
    assert flag["version"] == 1


async def test_flag_api_reads_and_writes(session: ClientSession, agents: dict[str, str]) -> None:
    async with embedded(make_config(agents)) as running:
        control = running.control_url
        async with session.get(f"{control}/api/flags/nope") as response:
            assert response.status == 404
            assert (await response.json())["error"] == 'unknown flag "nope"'
        async with session.post(f"{control}/api/flags/nope", json={"percentage": 1}) as response:
            assert response.status == 404
        async with session.post(
            f"{control}/api/flags/exp",
            json={"percentage": 12.34, "reason": "ramp"},
            headers={"X-ABGate-Actor": "alice"},
        ) as response:
            flag = await response.json()
        assert flag["percentage"] == 12.34
        assert flag["version"] == 2
        assert flag["updated_by"] == "alice"
        assert flag["reason"] == "ramp"
        async with session.get(f"{control}/api/flags") as response:
            assert [f["name"] for f in (await response.json())["flags"]] == ["exp"]
        async with session.get(f"{control}/health") as response:
            assert await response.text() == "OK"


async def test_flag_api_token(session: ClientSession, agents: dict[str, str]) -> None:
    async with embedded(make_config(agents), token="s3cret") as running:
        url = f"{running.control_url}/api/flags/exp"
        async with session.post(url, json={"percentage": 20}) as response:
            assert response.status == 401
        async with session.post(
            url, json={"percentage": 20}, headers={"Authorization": "Bearer wrong"}
        ) as response:
            assert response.status == 401
        async with session.post(
            url, json={"percentage": 20}, headers={"Authorization": "Bearer s3cret"}
        ) as response:
            assert response.status == 200
        async with session.get(url) as response:  # reading needs no token
            assert (await response.json())["percentage"] == 20


async def test_control_api_refuses_public_address_without_token(agents: dict[str, str]) -> None:
    config = make_config(agents)
    from dataclasses import replace

    from abgate.config.model import Listen

    public = replace(config, control=replace(config.control, listen=Listen("0.0.0.0", 0)))
    with pytest.raises(ValueError, match="not loopback, without a token"):
        async with embedded(public):
            pass
    async with embedded(public, token="t"):
        await asyncio.sleep(0)


async def test_embedded_write_that_cannot_be_persisted_changes_nothing(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    """A state file that cannot be written (read-only volume, full disk; here its directory
    is a plain file, which stops root too): 503 JSON, and the old percentage stays live."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = make_config(agents, percentage=10, flags={"state_file": str(blocker / "flags.json")})
    async with embedded(config) as running:
        async with session.post(
            f"{running.control_url}/api/flags/exp", json={"percentage": 60}
        ) as response:
            assert response.status == 503
            assert response.content_type == "application/json"
            error = (await response.json())["error"]
        assert error.startswith(
            "store unavailable, nothing was changed: cannot write "
            f"the state file {blocker / 'flags.json'}"
        )
        assert running.flags.get("exp").basis_points == 1000
        async with session.get(f"{running.control_url}/api/flags/exp/history") as response:
            assert (await response.json())["history"] == []
        users = [f"u{i}" for i in range(200)]
        arms = [await arm_of(session, running.proxy_url, user) for user in users]
        assert arms.count("treatment") < 40  # still about 10%, never 60%


async def test_unreadable_or_corrupt_state_file_starts_from_config(
    session: ClientSession, agents: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    directory = tmp_path / "a-directory"
    directory.mkdir()
    for path in (corrupt, directory):
        config = make_config(agents, percentage=10, flags={"state_file": str(path)})
        async with embedded(config) as running:
            assert running.flags.get("exp").basis_points == 1000
    messages = [r.message for r in caplog.records]
    assert any(m.startswith(f"ignoring corrupt state file {corrupt}") for m in messages)
    assert any(m.startswith(f"ignoring unreadable state file {directory}") for m in messages)


async def test_embedded_measurements_survive_a_restart(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    config = make_config(agents, percentage=50, flags={"state_file": str(tmp_path / "s.json")})
    async with embedded(config) as running:
        for user in range(30):
            await arm_of(session, running.proxy_url, f"u{user}")
    async with embedded(config) as restarted:
        phases, sums = await restarted.worker.store.read("exp")
        assert [p.basis_points for p in phases] == [5000]
        assert sum(s.count for k, s in sums.items() if k[3] == "error") == 30
        # The distinct-users bitmaps too (each user one bit; 30 users, no collision).
        assert sum((await restarted.worker.store.users("exp")).values()) == 30
        # An outcome that names its user lands in that user's cluster, with its requests.
        clusters = {k[4] for k in sums if k[3] == "error"}
        async with session.post(
            f"{restarted.control_url}/api/outcomes",
            json=[
                # null: the decision carried no sticky key, the outcome is its own unit
                {
                    "experiment": "exp",
                    "arm": "control",
                    "metric": "accuracy",
                    "value": 1,
                    "user": None,
                },
                {
                    "experiment": "exp",
                    "arm": "control",
                    "metric": "accuracy",
                    "value": 1,
                    "user": "u3",
                },
            ],
        ) as response:
            assert response.status == 200, await response.text()
        _, sums = await restarted.worker.store.read("exp")
        outcome_clusters = {k[4] for k in sums if k[3] == "accuracy"}
        assert -1 in outcome_clusters  # no user: its own unit
        assert len(outcome_clusters - {-1}) == 1
        assert outcome_clusters - {-1} <= clusters


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_compare_and_set_writes(
    session: ClientSession, agents: dict[str, str], tmp_path: Path, backend: str
) -> None:
    """A controller racing a person: the write based on a stale version is refused whole,
    with the flag as it stands, atomically in either store."""
    from contextlib import AsyncExitStack

    from tests.redis_server import redis_server

    async with AsyncExitStack() as stack:
        flags: dict[str, object] = {"state_file": None}
        if backend == "redis":
            flags["redis_url"] = (await stack.enter_async_context(redis_server(tmp_path))).url
        running = await stack.enter_async_context(embedded(make_config(agents, flags=flags)))
        api = f"{running.control_url}/api/flags"
        async with session.post(
            f"{api}/exp", json={"percentage": 25, "expected_version": 1}
        ) as response:
            assert response.status == 200
            assert (await response.json())["version"] == 2
        async with session.post(
            f"{api}/exp", json={"percentage": 50, "reason": "controller", "expected_version": 1}
        ) as response:
            assert response.status == 409
            body = await response.json()
        assert body["current"]["version"] == 2
        assert body["current"]["percentage"] == 25
        assert body["error"].startswith("exp is at version 2, not 1: changed by")
        async with session.post(
            api, json={"flags": {"exp": 75}, "expected_versions": {"exp": 1}}
        ) as response:
            assert response.status == 409
        async with session.get(f"{api}/exp") as response:
            assert (await response.json())["percentage"] == 25  # nothing written
        async with session.post(
            f"{api}/exp", json={"percentage": 50, "expected_version": "2"}
        ) as response:
            assert response.status == 400
        async with session.post(f"{api}/exp", json={"percentage": 50}) as response:
            assert response.status == 200  # without it, writes behave as before
