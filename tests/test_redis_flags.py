"""Flag state across sidecars with a real redis-server: convergence, ordering, outages,
missed messages, the audit trail, instances and rollback."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession

from abgate.config import Config
from abgate.control.serve import Embedded, Worker, embedded, worker
from tests.redis_server import RedisServer, redis_server
from tests.servers import make_config, tables_reach, until

URL = "/api/agent/credit/decide"


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path) as server:
        yield server


def redis_config(
    agents: dict[str, str], redis: RedisServer, tmp_path: Path, name: str, **flags: Any
) -> Config:
    return make_config(
        agents,
        percentage=10,
        flags={
            "redis_url": redis.url,
            "state_file": str(tmp_path / f"{name}.json"),
            "heartbeat_interval": "200ms",
            **flags,
        },
    )


@asynccontextmanager
async def cluster(
    agents: dict[str, str], redis: RedisServer, tmp_path: Path, proxies: int = 2
) -> AsyncIterator[tuple[Embedded, list[Worker]]]:
    """A control plane (abgate run) and `proxies` data-plane workers, all on one Redis."""
    async with AsyncExitStack() as stack:
        control = await stack.enter_async_context(
            embedded(redis_config(agents, redis, tmp_path, "control"))
        )
        workers = [
            await stack.enter_async_context(
                worker(redis_config(agents, redis, tmp_path, f"proxy{i}"))
            )
            for i in range(proxies)
        ]
        for node in [control.backend, *(w.backend for w in workers)]:
            assert node.sync is not None
            await asyncio.wait_for(node.sync.connected_event.wait(), 60)
        yield control, workers


async def post(session: ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(url, json=body) as response:
        return response.status, await response.json()


async def arm(session: ClientSession, proxy_url: str, user: str) -> str:
    async with session.get(f"{proxy_url}{URL}", headers={"X-User-Id": user}) as response:
        assert response.status == 200
        return response.headers["X-ABGate-Arm"]


async def test_proxies_converge_on_a_change(
    session: ClientSession, agents: dict[str, str], redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster(agents, redis, tmp_path, proxies=3) as (control, workers):
        status, flag = await post(
            session, f"{control.control_url}/api/flags/exp", {"percentage": 100, "reason": "all in"}
        )
        assert status == 200
        nodes = [control.flags, *(w.flags for w in workers)]
        await tables_reach(nodes, "exp", flag["version"])
        for w in workers:  # and they route with it
            assert await arm(session, w.proxy_url, "anyone") == "treatment"
        async with session.get(f"{control.control_url}/api/instances") as response:
            instances = (await response.json())["instances"]
        assert len(instances) == 4  # the control plane routes too (abgate run)
        assert {i["address"] for i in instances} == {
            control.proxy_url,
            *(w.proxy_url for w in workers),
        }
        async with session.get(f"{control.control_url}/api/breakers") as response:
            breakers = await response.json()
        assert len(breakers["instances"]) == 4  # every sidecar reports its breakers
        assert all(
            i["breakers"] == {"control": "closed", "treatment": "closed"}
            for i in breakers["instances"]
        )


async def test_concurrent_writers_never_lose_or_reorder(
    session: ClientSession, agents: dict[str, str], redis: RedisServer, tmp_path: Path
) -> None:
    async with (
        cluster(agents, redis, tmp_path, proxies=1) as (control, workers),
        embedded(redis_config(agents, redis, tmp_path, "control2")) as second,
    ):
        writers = [control.control_url, second.control_url]
        results = await asyncio.gather(
            *(
                post(
                    session,
                    f"{writers[i % 2]}/api/flags/exp",
                    {"percentage": i % 100, "reason": f"w{i}"},
                )
                for i in range(60)
            )
        )
        assert all(status == 200 for status, _ in results)
        versions = sorted(flag["version"] for _, flag in results)
        assert versions == list(range(2, 62))  # every write got its own version
        newest = max((flag for _, flag in results), key=lambda f: f["version"])
        nodes = [control.flags, second.flags, workers[0].flags]
        await tables_reach(nodes, "exp", newest["version"])
        assert {t.get("exp").percentage for t in nodes} == {newest["percentage"]}
        async with session.get(f"{control.control_url}/api/flags/exp/history?limit=100") as r:
            history = (await r.json())["history"]
        assert [h["version"] for h in history] == list(range(61, 1, -1))  # newest first


async def test_redis_killed_under_load_then_back_empty(
    session: ClientSession, agents: dict[str, str], redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster(agents, redis, tmp_path, proxies=2) as (control, workers):
        status, flag = await post(
            session, f"{control.control_url}/api/flags/exp", {"percentage": 30}
        )
        nodes = [control.flags, *(w.flags for w in workers)]
        await tables_reach(nodes, "exp", flag["version"])

        statuses: Counter[int] = Counter()
        stop = asyncio.Event()

        async def load(proxy_url: str) -> None:
            count = 0
            while not stop.is_set() and count < 3000:  # bounded in count and time
                async with session.get(
                    f"{proxy_url}{URL}", headers={"X-User-Id": f"u{count}"}
                ) as response:
                    statuses[response.status] += 1
                count += 1

        from abgate.state.redis_flags import RedisFlagStore

        store = control.backend.store
        assert isinstance(store, RedisFlagStore)
        reseeded_before = store.reseeded  # the first start seeded an empty Redis already
        loaders = [asyncio.create_task(load(w.proxy_url)) for w in workers]
        await until(lambda: statuses.total() > 100)
        await redis.kill()
        syncs = [w.backend.sync for w in workers]
        await until(lambda: not any(s.connected for s in syncs if s))
        status, body = await post(
            session, f"{control.control_url}/api/flags/exp", {"percentage": 90}
        )
        assert status == 503  # nothing half-written while Redis is away
        assert "nothing was changed" in body["error"]
        seen = statuses.total()
        await until(lambda: statuses.total() > seen + 200)  # still serving during the outage
        await redis.start()  # back, and empty
        for sync in [*syncs, control.backend.sync]:  # the control plane re-seeds on connect
            assert sync is not None
            await asyncio.wait_for(sync.connected_event.wait(), 60)
        stop.set()
        await asyncio.gather(*loaders)
        assert set(statuses) == {200}, statuses  # zero failed client requests
        assert all(t.get("exp").percentage == 30 for t in nodes)  # not reset
        client = redis.client()
        try:
            raw = await client.hget("{abgate}:flags", "exp")
            assert raw is not None
            stored = orjson.loads(raw)
        finally:
            await client.aclose()
        assert stored["basis_points"] == 3000  # re-seeded from the control plane's copy
        assert stored["version"] == flag["version"]
        assert store.reseeded == reseeded_before + 1
        async with session.get(f"{control.control_url}/metrics") as response:
            metrics = await response.text()
        assert f"abgate_flag_reseeds_total {store.reseeded}.0" in metrics
        # Connected again, and it stays so (a freshly started Redis may refuse a first
        # resync while it loads, and the sync reconnects once more: wait for the gauge).
        async with asyncio.timeout(60):
            while "abgate_flag_store_connected 1.0" not in metrics:
                await asyncio.sleep(0.1)
                async with session.get(f"{control.control_url}/metrics") as response:
                    metrics = await response.text()


async def test_missed_message_is_recovered_on_reconnect(
    session: ClientSession, agents: dict[str, str], redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster(agents, redis, tmp_path, proxies=2) as (_, workers):
        client = redis.client()
        try:
            # A change that was never published: as if the message was lost in transit.
            silent = {
                "name": "exp",
                "basis_points": 7700,
                "version": 50,
                "updated_at": 1.0,
                "updated_by": "other",
                "reason": "missed",
            }
            await client.hset("{abgate}:flags", "exp", orjson.dumps(silent).decode())
            # Nothing arrives by itself: a change published after the silent one (an older
            # version) is applied, and the silent one is still not there.
            later = {**silent, "basis_points": 4900, "version": 49, "reason": "published"}
            await client.publish("{abgate}:changes", orjson.dumps(later).decode())
            await tables_reach([w.flags for w in workers], "exp", 49)
            assert all(w.flags.get("exp").version == 49 for w in workers)
            await client.client_kill_filter(_type="pubsub")  # drop every subscriber
        finally:
            await client.aclose()
        await tables_reach([w.flags for w in workers], "exp", 50)
        assert all(w.flags.get("exp").basis_points == 7700 for w in workers)


async def test_start_while_redis_is_down(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    from tests.redis_server import RedisServer, redis_binary

    server = RedisServer(redis_binary(), tmp_path)  # not started yet
    snapshot = tmp_path / "proxy0.json"
    snapshot.write_bytes(
        orjson.dumps(
            {
                "format": 1,
                "flags": [
                    {
                        "name": "exp",
                        "basis_points": 10_000,
                        "version": 9,
                        "updated_at": 1.0,
                        "updated_by": "x",
                        "reason": "last known",
                    }
                ],
                "history": {},
            }
        )
    )
    async with worker(redis_config(agents, server, tmp_path, "proxy0")) as w:
        assert w.backend.sync is not None
        assert not w.backend.sync.connected
        # Serving at once, from the config defaults plus the local snapshot.
        assert await arm(session, w.proxy_url, "someone") == "treatment"
        await server.start()
        try:
            await asyncio.wait_for(w.backend.sync.connected_event.wait(), 60)
            assert w.flags.get("exp").version == 9  # an empty Redis resets nothing
        finally:
            await server.kill()


async def test_rollback_waits_for_every_instance(
    session: ClientSession, agents: dict[str, str], redis: RedisServer, tmp_path: Path
) -> None:
    async with cluster(agents, redis, tmp_path, proxies=3) as (control, workers):
        await post(session, f"{control.control_url}/api/flags/exp", {"percentage": 75})
        status, body = await post(
            session,
            f"{control.control_url}/api/rollback",
            {"experiments": ["exp"], "reason": "bad metrics"},
        )
        assert status == 200, body
        assert body["converged"] is True
        assert len(body["instances"]) == 4
        assert all(i["converged"] for i in body["instances"])
        assert body["flags"][0]["percentage"] == 0
        for w in workers:
            assert w.flags.get("exp").percentage == 0
            assert await arm(session, w.proxy_url, "anyone") == "control"

        # An instance that heartbeats but never applies: the rollback names it after timeout.
        client = redis.client()
        try:
            now = asyncio.get_running_loop().time()
            import time

            await client.hset(
                "{abgate}:instance:stuck",
                mapping={
                    "id": "stuck",
                    "address": "http://10.0.0.9:8080",
                    "pid": 1,
                    "started_at": time.time(),
                    "heartbeat_at": time.time(),
                    "applied": orjson.dumps({"exp": 1}).decode(),
                },
            )
            await client.zadd("{abgate}:instances", {"stuck": time.time()})
            status, body = await post(
                session, f"{control.control_url}/api/rollback", {"timeout": 0.5}
            )
            assert asyncio.get_running_loop().time() - now < 10
        finally:
            await client.aclose()
        assert status == 504
        assert body["laggards"] == ["stuck"]
        assert body["converged"] is False


async def test_embedded_store_survives_restart(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    state = tmp_path / "flags.json"
    config = make_config(agents, flags={"state_file": str(state)})
    async with embedded(config) as running:
        status, flag = await post(
            session, f"{running.control_url}/api/flags/exp", {"percentage": 42.5, "reason": "step"}
        )
        assert status == 200
    assert state.exists()
    async with embedded(config) as running:
        assert running.flags.get("exp").percentage == 42.5
        assert running.flags.get("exp").version == flag["version"]
        async with session.get(f"{running.control_url}/api/flags/exp/history") as response:
            history = (await response.json())["history"]
        assert [(h["percentage"], h["reason"]) for h in history] == [(42.5, "step")]
        async with session.get(f"{running.control_url}/api/instances") as response:
            instances = (await response.json())["instances"]
        assert [i["address"] for i in instances] == [running.proxy_url]
        assert instances[0]["converged"] is True
