"""CUPED (issue 26 item 6): outcomes posted with their user's pre-experiment value of the
metric are judged adjusted by it, from the sums alone, through the path every reader takes
(control/measured.py `by_arm`); small seeded versions of benchmarks/aa_ramp.py's CUPED table."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession

from abgate.config import parse_config
from abgate.control.measured import by_arm
from abgate.control.serve import embedded
from abgate.control.stats.clusters import ClusteredSums
from abgate.control.stats.means import means_p
from abgate.state.measurements import CLUSTERS, CROSS, PRE, MeasureKey, Phase, Sums
from benchmarks.aa_ramp import SKEWED, Traffic, simulate


def _users(rng: np.random.Generator, n: int, lift: float = 0.0) -> dict[str, np.ndarray]:
    """n requests from 2,000 users: a user's value is their own level plus noise, and the
    covariate is that level measured before, with its own noise."""
    level = rng.normal(10.0, 3.0, 2_000)
    before = level + rng.normal(0.0, 1.0, 2_000)
    who = rng.integers(0, 2_000, n)
    arm = who % 2  # users split evenly
    y = level[who] + rng.normal(0.0, 2.0, n) + lift * arm
    return {"who": who, "arm": arm, "y": y, "x": before[who]}


def _store(data: dict[str, np.ndarray], *, covariate: bool = True) -> dict[MeasureKey, Sums]:
    sums: dict[MeasureKey, Sums] = {}
    for who, arm, y, x in zip(data["who"], data["arm"], data["y"], data["x"], strict=True):
        name, cluster = ("a", "b")[int(arm)], int(who) % CLUSTERS
        sums.setdefault(("e", 1, name, "value", cluster), Sums()).add(float(y))
        if covariate:
            sums.setdefault(("e", 1, name, "value" + PRE, cluster), Sums()).add(float(x))
            sums.setdefault(("e", 1, name, "value" + CROSS, cluster), Sums()).add(float(x * y))
    return sums


def test_the_adjusted_sums_are_the_adjusted_values_own() -> None:
    data = _users(np.random.default_rng(2710), 6_000)
    arms = by_arm(_store(data))
    assert set(arms) == {(1, "a", "value"), (1, "b", "value")}  # the covariates are no metric
    x, y = data["x"], data["y"]
    slope = np.cov(x, y, bias=True)[0, 1] / np.var(x)
    adjusted = y - slope * (x - x.mean())
    for index, name in enumerate(("a", "b")):
        mine = data["arm"] == index
        clusters: dict[int, list[float]] = {}
        for who, value in zip(data["who"][mine], adjusted[mine], strict=True):
            clusters.setdefault(int(who) % CLUSTERS, []).append(float(value))
        expected = ClusteredSums.of(
            (True, len(v), sum(v), sum(t * t for t in v)) for v in clusters.values()
        )
        got = arms[(1, name, "value")]
        assert got.adjusted
        assert got.count == expected.count
        assert got.clusters == expected.clusters
        for field in ("total", "total_sq", "count_sq", "cluster_sq", "cross"):
            assert getattr(got, field) == pytest.approx(getattr(expected, field), rel=1e-9)


def test_the_covariate_takes_out_the_variance_it_explains() -> None:
    data = _users(np.random.default_rng(2711), 6_000)
    plain = by_arm(_store(data, covariate=False))[(1, "a", "value")]
    adjusted = by_arm(_store(data))[(1, "a", "value")]
    assert not plain.adjusted
    # users' own levels (sd 3) are most of the spread; the covariate knows them (sd 1 off)
    assert adjusted.variance_of_mean() < 0.3 * plain.variance_of_mean()


def test_nothing_is_adjusted_unless_every_outcome_carried_its_covariate() -> None:
    data = _users(np.random.default_rng(2712), 2_000)
    sums = _store(data)
    key = next(k for k in sums if k[3] == "value" + PRE and k[2] == "b")
    sums[key] = Sums(sums[key].count - 1, sums[key].total, sums[key].total_sq)
    assert not any(s.adjusted for s in by_arm(sums).values())


def test_aa_with_the_covariate_holds_alpha_and_a_real_lift_is_found_sooner() -> None:
    rng = np.random.default_rng(2713)
    rejected = 0
    for _ in range(200):
        arms = by_arm(_store(_users(rng, 1_500)))
        rejected += means_p(arms[(1, "a", "value")], arms[(1, "b", "value")]) < 0.05
    assert rejected <= 200 * 0.05
    found = {False: 0, True: 0}
    for _ in range(100):  # a lift of 0.5 on a spread of about 3.6
        lift = _users(rng, 1_500, lift=0.5)
        for covariate in found:
            arms = by_arm(_store(lift, covariate=covariate))
            found[covariate] += means_p(arms[(1, "a", "value")], arms[(1, "b", "value")]) < 0.05
    assert found[True] >= 3 * found[False]  # measured: 76 of 100 against 13


CONFIG = """\
upstreams:
  a: {url: "http://127.0.0.1:1"}
  b: {url: "http://127.0.0.1:2"}
routes: [{prefix: /, experiment: e}]
proxy: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}
control: {listen: "127.0.0.1:0"}
flags: {state_file: null}
experiments:
  e:
    control: a
    treatment: b
    percentage: 50
    metrics:
      converted: {type: binary, direction: higher}
"""


async def test_the_outcomes_api_takes_a_covariate_and_the_metric_is_judged_adjusted(
    session: ClientSession,
) -> None:
    config = parse_config(CONFIG, "<test>")
    rng = np.random.default_rng(2715)
    items: list[dict[str, Any]] = []
    for index in range(400):
        before = float(rng.random())
        items.append(
            {
                "experiment": "e",
                "arm": "ab"[index % 2],
                "metric": "converted",
                "value": bool(rng.random() < before),
                "covariate": before,
            }
        )
    async with embedded(config) as stack:
        url = f"{stack.control_url}/api/outcomes"
        async with session.post(url, json=items) as response:
            assert response.status == 200, await response.text()
        for bad in (True, "0.5", 1e200):  # not a number, or its square not finite
            body = [{**items[0], "covariate": bad}]
            async with session.post(url, json=body) as response:
                assert response.status == 400
                assert (await response.json())["error"].startswith("[0].covariate: ")
        _, sums = await stack.worker.store.read("e")
        flag = stack.flags.get("e")  # a phase the store knows (a proxied request would start it)
        await stack.worker.store.start_phase("e", Phase(flag.phase, 5000, time.time()))
        reports = await stack.worker.evaluate_all()
        assert reports["e"].metrics["converted"].as_json()["cuped"] is True
        # one outcome without its covariate (null is none): the report says it is not applied
        async with session.post(url, json=[{**items[0], "covariate": None}]) as response:
            assert response.status == 200
        reports = await stack.worker.evaluate_all()
        assert reports["e"].metrics["converted"].as_json()["cuped"] is False
    arms = by_arm(sums)
    judged = [s for (_, _, metric), s in arms.items() if metric == "converted"]
    assert len(judged) == 2
    assert all(s.adjusted for s in judged)
    assert sum(s.count for s in judged) == 400


def test_cuped_shortens_a_rollout_gated_on_its_primary_and_rolls_back_none() -> None:
    """A/A rollouts of a plan gated on its primary (whole ramp, holdout included), the
    same users and draws without and with each outcome's covariate."""
    traffic = Traffic("test", 200_000.0, 200_000, 60.0, 24, 0.1)
    ticks: dict[bool, list[int]] = {}
    for covariate in (False, True):
        rng = np.random.default_rng(2716)
        ends = [
            simulate(rng, SKEWED, traffic, 0.20, covariate=covariate, guarded=False)
            for _ in range(3)
        ]
        assert not any(e.end == "rolled_back" for e in ends)
        ticks[covariate] = sorted(e.ticks if e.end == "completed" else 10**6 for e in ends)
    # measured: 230, 252 and 312 ticks with it; 332, 357 and one undecided in a day without
    assert all(e < 1440 for e in ticks[True])
    assert ticks[True][1] < ticks[False][1]
