"""The statistics worker's timeline (control/timeline.py): bounded whatever the duration, and
served at /api/experiments/{name}/timeline with a real rollout's numbers."""

from __future__ import annotations

import itertools
from typing import Any

from aiohttp import ClientSession

from abgate.control.timeline import Point, Series, quantile
from tests.test_rollout import FAST, api, stack, traffic, until


def _point(t: float) -> Point:
    return Point(t, 1, 50.0, {"control": int(t), "treatment": int(t)}, {}, None, {})


def test_the_series_stays_bounded_spread_over_the_run_and_ends_at_the_newest_tick() -> None:
    series = Series(capacity=8)
    for tick in range(1, 10_001):
        series.add(_point(float(tick)))
        assert len(series.shown()) <= 9  # the capacity, and the newest tick beside it
    shown = [p.t for p in series.shown()]
    assert shown[-1] == 10_000.0
    assert series.ticks == 10_000
    assert series.stride == 2048  # doubled each time the 8 points filled: 10,000 / 2048 < 8
    kept = [p.t for p in series.points]
    gaps = [b - a for a, b in itertools.pairwise(kept[1:])]
    assert set(gaps) == {2048.0}  # evenly spread: every stride-th tick kept
    # The run's first point stays: a chart draws the decisions from it (the rollout's start
    # fell before the first point shown once the series had thinned, and was not drawn).
    assert shown[0] == 1.0


def test_a_short_run_keeps_every_tick() -> None:
    series = Series(capacity=8)
    for tick in range(1, 6):
        series.add(_point(float(tick)))
    assert [p.t for p in series.shown()] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_quantiles_interpolate_within_a_bucket_as_prometheus_does() -> None:
    bounds = (0.001, 0.002, 0.004)
    assert quantile(bounds, [0, 0, 0, 0], 0.5) is None
    assert quantile(bounds, [0, 10, 0, 0], 0.5) == 0.0015  # half-way through (1 ms, 2 ms]
    assert quantile(bounds, [10, 0, 0, 0], 0.95) == 0.00095
    assert quantile(bounds, [0, 0, 0, 5], 0.5) == 0.004  # beyond the last bound: that bound


async def test_a_rollout_timeline_shows_its_share_decisions_effects_samples_and_latency(
    session: ClientSession,
) -> None:
    plan = {**FAST, "stages": [25, {"percentage": 50, "approval": True}, 100]}
    async with stack(plan) as running, traffic(session, running):
        worker = running.worker
        path = "/api/experiments/exp/timeline"
        empty = await api(session, running, "GET", path)
        assert len(empty["points"]) == empty["ticks"]  # the worker's own first tick, or none
        await api(session, running, "POST", "/api/rollouts/exp", {"reason": "ship"}, expect=201)
        await until(session, running, lambda v: v["state"] == "awaiting_approval")
        for _ in range(3):  # three ticks of the worker, made here rather than waited for
            await running.plane.flush_measurements()
            await worker.record(await worker.evaluate_all())
        timeline: dict[str, Any] = await api(session, running, "GET", path)
        experiment = await api(session, running, "GET", "/api/experiments/exp")
        await api(session, running, "GET", "/api/experiments/nope/timeline", expect=404)

    assert timeline["arms"] == {"control": "control", "treatment": "treatment"}
    points = timeline["points"]
    assert len(points) == timeline["ticks"] >= empty["ticks"] + 3  # short: every tick kept
    last = points[-1]
    assert last["percentage"] == 25
    assert last["phase"] == experiment["current_phase"]["id"]
    assert last["samples"]["control"] > 0
    assert last["samples"]["treatment"] > 0
    rollout = last["rollout"]
    assert rollout["state"] == "awaiting_approval"
    assert "waiting for approval of 50%" in rollout["reason"]
    latency = last["metrics"]["latency"]
    assert latency["role"] == "guardrail"
    assert latency["line"] is not None
    assert latency["line"] < 0
    assert latency["low"] <= latency["effect"] <= latency["high"]
    for arm in ("control", "treatment"):  # each point: the answers since the one before
        windows = [p["latency_ms"][arm] for p in points if arm in p["latency_ms"]]
        assert sum(w["n"] for w in windows) > 0
        for window in windows:
            if window["n"]:
                assert 0 < window["p50"] <= window["p95"] < 10_000
            else:
                assert window["p50"] is None
                assert window["p95"] is None
    events = timeline["events"]
    assert events[0]["transition"] == "started"
    assert events[0]["reason"] == "ship"
    assert any(e["transition"] == "awaiting_approval" for e in events)
    assert [p["id"] for p in timeline["phases"]][-1] == last["phase"]
