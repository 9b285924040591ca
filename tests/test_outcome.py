"""One outcome record per proxied request, to every sink wired at start-up (real agents)."""

from __future__ import annotations

from aiohttp import ClientSession

from control.serve import embedded
from proxy.hashing import BUCKETS, bucket, fnv1a32
from proxy.outcome import NO_BUCKET, Outcome
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
    from proxy.hashing import fnv1a32, user_draw
    from proxy.measure import NEW_USERS_LIMIT, ArmRecorder, Measurements, PhaseRef

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
