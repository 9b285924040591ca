"""One outcome record per proxied request, to every sink wired at start-up (real agents)."""

from __future__ import annotations

import pytest
from aiohttp import ClientSession

from abgate.control.serve import embedded
from abgate.proxy.hashing import BUCKETS, NO_BUCKET, bucket, fnv1a32
from abgate.proxy.outcome import Outcome
from scripts.demo_agent import Behaviour, create_app
from tests.servers import make_config, serve_app

URL = "/api/agent/credit/decide"


async def test_each_request_gives_one_record_matching_its_headers(
    agents: dict[str, str], session: ClientSession
) -> None:
    config = make_config(agents, percentage=50)
    seen: list[Outcome] = []
    async with embedded(config) as running:
        running.plane.add_sink(seen.append)
        headers_of: dict[str, dict[str, str]] = {}
        for i in range(40):
            async with session.post(
                running.proxy_url + URL, data=b'{"amount": 3}', headers={"X-User-Id": f"user-{i}"}
            ) as response:
                await response.read()
                headers_of[response.headers["X-Request-Id"]] = {
                    **response.headers,
                    "user": f"user-{i}",
                }
    assert len(seen) == 40
    assert {o.request_id for o in seen} == set(headers_of)
    seed = fnv1a32(config.experiments["exp"].seed)
    for outcome in seen:
        headers = headers_of[outcome.request_id]
        assert outcome.experiment == "exp"
        assert outcome.arm == headers["X-ABGate-Arm"]
        assert outcome.upstream == headers["X-ABGate-Served-By"]
        assert str(outcome.phase) == headers["X-ABGate-Phase"]
        assert outcome.status == 200
        assert not outcome.error
        assert not outcome.fallback
        assert outcome.seconds is not None
        assert outcome.seconds > 0
        assert 0 <= outcome.bucket < BUCKETS
        assert outcome.bucket == bucket(seed, headers["user"])
        assert (outcome.bucket < BUCKETS // 2) == (outcome.arm == "treatment")
    assert {o.arm for o in seen} == {"control", "treatment"}


async def test_a_fallback_is_one_record_in_the_assigned_arm(session: ClientSession) -> None:
    behaviour = Behaviour()
    behaviour.failure_rate = 1.0  # every ML answer is a 500
    async with (
        serve_app(create_app("deterministic")) as control,
        serve_app(create_app("ml", behaviour, seed=3)) as treatment,
    ):
        config = make_config(
            {"control": control, "treatment": treatment},
            percentage=100,
            experiment={"fallback_on_5xx": True},
            routes=[{"prefix": "/api/", "experiment": "exp", "replayable": True}],
            proxy={"retry_budget": {"ratio": 1.0, "min_per_second": 1000}},
        )
        seen: list[Outcome] = []
        async with embedded(config) as running:
            running.plane.add_sink(seen.append)
            async with session.post(
                running.proxy_url + URL, data=b"{}", headers={"X-User-Id": "u"}
            ) as response:
                await response.read()
                assert response.status == 200
                assert response.headers["X-ABGate-Fallback"] == "status-500"
    [outcome] = seen
    assert (outcome.arm, outcome.upstream, outcome.fallback) == (
        "treatment",
        "control",
        "status-500",
    )
    assert outcome.bucket == NO_BUCKET  # at 100% the split hashes nothing


def test_new_users_between_flushes_are_bounded() -> None:
    """A data plane that never flushes (no store) keeps at most NEW_USERS_LIMIT new users per
    arm; a user left out is sent with a later request, after a flush."""
    from abgate.proxy.hashing import fnv1a32, user_draw
    from abgate.proxy.measure import NEW_USERS_LIMIT, ArmRecorder, Measurements, PhaseRef

    measurements = Measurements()
    recorder = ArmRecorder(measurements, "exp", "ml", PhaseRef(1))
    seed = fnv1a32("exp")
    draws = [user_draw(seed, f"user-{i}") for i in range(NEW_USERS_LIMIT + 5000)]
    for draw in draws:
        recorder.record(200, 0.01, draw)
    _, _, users = measurements.drain()
    first = users[("exp", 1, "ml")]
    assert len(first) == NEW_USERS_LIMIT
    for draw in draws:  # after the flush, the ones left out are sent, once
        recorder.record(200, 0.01, draw)
    _, _, users = measurements.drain()
    second = users[("exp", 1, "ml")]
    every = {d >> 27 for d in draws}  # the hash's top 20 bits, as the recorder indexes them
    assert not set(first) & set(second)
    assert set(first) | set(second) == every


async def test_a_request_in_flight_over_a_percentage_change_counts_in_its_decisions_phase(
    session: ClientSession,
) -> None:
    """Its arm was chosen in the phase before the change: its record, its sums and its
    X-ABGate-Phase say that phase, not the one in force when it was answered (issue 26)."""
    import asyncio

    from tests.servers import raw_server, read_request

    arrived, release = asyncio.Event(), asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            arrived.set()
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    seen: list[Outcome] = []
    async with raw_server(held) as (url, _):
        config = make_config({"control": url, "treatment": url}, percentage=100)
        async with embedded(config) as running:
            running.plane.add_sink(seen.append)
            before = running.flags.get("exp").phase
            in_flight = asyncio.create_task(
                session.get(f"{running.proxy_url}/x", headers={"X-User-Id": "u1"})
            )
            await arrived.wait()
            async with session.post(
                f"{running.control_url}/api/flags/exp", json={"percentage": 50, "reason": "t"}
            ) as response:
                assert response.status == 200
            after = running.flags.get("exp").phase
            assert after != before
            release.set()
            async with await in_flight as response:
                assert response.headers["X-ABGate-Phase"] == str(before)
            batch, _, _ = running.plane.measurements.drain()
    assert [o.phase for o in seen] == [before]
    assert {key[1] for key in batch if key[2] == "treatment"} == {before}


def test_a_late_answer_is_summed_in_the_phase_given() -> None:
    from abgate.proxy.hashing import fnv1a32, user_draw
    from abgate.proxy.measure import ArmRecorder, Measurements, PhaseRef

    measurements, phase = Measurements(), PhaseRef(1)
    recorder = ArmRecorder(measurements, "exp", "ml", phase)
    draw = user_draw(fnv1a32("exp"), "user-1")
    recorder.record(200, 0.01, draw, 1)
    phase.move(2)
    recorder.record(200, 0.03, draw, 1)  # decided in phase 1, answered in phase 2
    recorder.add("accuracy", 1.0)
    recorder.record(200, 0.02, draw, 2)
    batch, _, users = measurements.drain()
    by_phase: dict[tuple[int, str], int] = {}
    for (_, phase_id, _, metric, _), sums in batch.items():
        by_phase[(phase_id, metric)] = by_phase.get((phase_id, metric), 0) + sums.count
    assert by_phase == {
        (1, "error"): 2,
        (1, "latency"): 2,
        (1, "accuracy"): 1,
        (2, "error"): 1,
        (2, "latency"): 1,
    }
    assert set(users) == {("exp", 1, "ml"), ("exp", 2, "ml")}


async def test_a_streamed_answer_that_breaks_off_is_recorded_as_broken(
    session: ClientSession,
) -> None:
    """The head went out with 200, then the upstream closed mid-body: the client saw a
    broken answer, and the record says so (502, `closed`), not the head's 200 (issue 27)."""
    from tests.test_hostile_upstream import closes_mid_body, hostile

    seen: list[Outcome] = []
    async with hostile() as (upstream, running):
        running.plane.add_sink(seen.append)
        upstream.behaviour = closes_mid_body
        try:
            async with session.get(f"{running.proxy_url}/x") as response:
                assert response.status == 200
                await response.read()
        except Exception:
            pass
    assert [(o.status, o.error) for o in seen] == [(502, "closed")]


async def test_a_sink_that_raises_costs_its_request_nothing_but_a_log_line(
    session: ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a sink after the answer went out: the client has its answer, the next
    request is served, and the traceback is logged."""
    from tests.servers import echo_app

    def broken(outcome: Outcome) -> None:
        raise RuntimeError("sink bug")

    async with serve_app(echo_app()) as url:
        config = make_config({"control": url}, routes=[{"prefix": "/", "upstream": "control"}])
        async with embedded(config) as running:
            running.plane.add_sink(broken)
            for _ in range(2):
                async with session.get(f"{running.proxy_url}/x") as response:
                    assert response.status == 200
                    assert b'"path_qs":"/x"' in await response.read()
    logged = [r for r in caplog.records if r.getMessage().startswith("error handling request")]
    assert len(logged) == 2
    assert all(r.exc_info and "sink bug" in str(r.exc_info[1]) for r in logged)
