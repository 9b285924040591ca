"""Issue 26 item 1: a maturity window per metric. An outcome counts once its decision is as
old as the metric's window, so early looks are not biased towards fast outcomes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession

from abgate.config import parse_config
from abgate.config.errors import ConfigError
from abgate.control.maturing import mature_at
from abgate.control.serve import embedded
from abgate.state.measurements import (
    MAX_HELD,
    UNCLUSTERED,
    MaturingFull,
    MeasurementStore,
    MemoryMeasurements,
)
from abgate.state.redis_client import connect
from abgate.state.redis_measurements import RedisMeasurements
from abgate.state.state_file import StateFile
from tests.redis_server import redis_server

GOOD = """\
upstreams:
  a: {url: "http://127.0.0.1:1"}
  b: {url: "http://127.0.0.1:2"}
routes: [{prefix: /, experiment: e}]
experiments:
  e:
    control: a
    treatment: b
    percentage: 0
    metrics:
      converted: {type: binary, direction: higher, maturity: %s}
      clicked: {type: binary, direction: higher}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "<test>")
    return [str(problem) for problem in caught.value.problems]


def test_maturity_is_parsed_once_with_errors_that_name_the_key_and_line() -> None:
    metrics = {m.name: m for m in parse_config(GOOD % "1h", "<test>").experiments["e"].metrics}
    assert metrics["converted"].maturity == 3600.0
    assert metrics["clicked"].maturity is None  # the default: counted at once, as before
    assert problems(GOOD % "soon") == [
        "experiments.e.metrics.converted.maturity (line 11): expected a duration such as "
        "1.5, '250ms' or '5s', got \"soon\""
    ]
    from_answer = GOOD.replace("maturity: %s", 'json: "$.p", maturity: 1h')
    assert problems(from_answer) == [
        "experiments.e.metrics.converted.maturity (line 11): applies to outcomes posted "
        "after the decision; converted is read from each answer"
    ]


def test_an_outcome_matures_when_its_decision_is_old_enough() -> None:
    assert mature_at(100.0, None, 150.0) is None
    assert mature_at(100.0, 60.0, 170.0) is None  # already mature: counts at once
    assert mature_at(100.0, 60.0, 150.0) == 160.0


KEY = ("e", 1, "b", "converted", UNCLUSTERED)


async def _waits_then_counts_once(store: MeasurementStore) -> None:
    """Two outcomes held; the one due by 170 s counts, once, however often `mature` runs."""
    await store.hold([(KEY, 1.0, 160.0), (KEY, 0.0, 200.0)])
    assert await store.mature(150.0) == 0
    assert await store.mature(170.0) == 1
    assert await store.mature(170.0) == 0
    _, sums = await store.read("e")
    assert (sums[KEY].count, sums[KEY].total) == (1, 1.0)
    assert await store.held() == 1


async def test_waiting_outcomes_survive_a_restart_of_the_embedded_store(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    store = MemoryMeasurements(state)
    await _waits_then_counts_once(store)
    store.save()
    again = MemoryMeasurements(StateFile(tmp_path / "state.json"))  # a restart
    assert await again.held() == 1  # the younger one still waits: not lost, not counted
    assert await again.mature(300.0) == 1
    _, sums = await again.read("e")
    assert (sums[KEY].count, sums[KEY].total) == (2, 1.0)


async def test_waiting_outcomes_are_kept_in_redis_and_count_once(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as server:
        client = connect(server.url)
        try:
            await _waits_then_counts_once(RedisMeasurements(client, "abgate"))
            # another control instance (or this one restarted) sees what waits, and the
            # two moving it at once count it once
            first, second = RedisMeasurements(client, "abgate"), RedisMeasurements(client, "abgate")
            assert await second.held() == 1
            moved = await asyncio.gather(first.mature(300.0), second.mature(300.0))
            assert sorted(moved) == [0, 1]
            _, sums = await first.read("e")
        finally:
            await client.aclose()
    assert (sums[KEY].count, sums[KEY].total, sums[KEY].total_sq) == (2, 1.0, 1.0)


async def test_a_full_queue_refuses_the_batch_whole() -> None:
    store = MemoryMeasurements()
    with pytest.raises(MaturingFull, match="at most 1,000,000"):
        await store.hold([(KEY, 1.0, 160.0)] * (MAX_HELD + 1))
    assert await store.held() == 0


async def test_the_outcomes_api_holds_young_decisions_and_counts_mature_ones(
    session: ClientSession,
) -> None:
    document: dict[str, Any] = yaml.safe_load(GOOD % "1h")
    document["proxy"] = {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"}
    document["control"] = {"listen": "127.0.0.1:0"}
    document["flags"] = {"state_file": None}
    config = parse_config(yaml.safe_dump(document), "<test>")
    item = {"experiment": "e", "arm": "b", "metric": "converted", "value": 1}
    async with embedded(config) as stack:
        url = f"{stack.control_url}/api/outcomes"

        async def post(items: list[dict[str, Any]]) -> tuple[int, Any]:
            async with session.post(url, json=items) as response:
                return response.status, await response.json()

        status, body = await post([item])
        assert status == 400
        assert body["error"].startswith("[0].decided_at: converted counts outcomes only once")
        now = time.time()
        status, _ = await post(
            [{**item, "decided_at": now - 7200}, {**item, "decided_at": now - 60, "value": 0}]
        )
        assert status == 200
        _, sums = await stack.worker.store.read("e")
        counted = sum(s.count for k, s in sums.items() if k[3] == "converted")
        assert counted == 1  # the two-hour-old decision; the minute-old one waits
        assert await stack.worker.store.held() == 1
        await stack.worker.evaluate_all()
        assert stack.worker.waiting == 1  # abgate_outcomes_waiting
        status, body = await post([{**item, "decided_at": "yesterday"}])
        assert status == 400
        assert "Unix seconds" in body["error"]
        status, _ = await post([{**item, "metric": "clicked"}])  # no window: at once
        assert status == 200


def test_a_worse_model_converting_sooner_ships_without_the_window_not_with_it() -> None:
    # benchmarks/stage_sim.py "maturity": conversions posted as they come, non-conversions
    # when the window closes; the treatment converts sooner but 4 points less in the end.
    from benchmarks.stage_sim import late_outcomes

    before = late_outcomes(runs=2, seed=3, maturity=False, treatment_rate=0.16, ticks=700)
    after = late_outcomes(runs=2, seed=3, maturity=True, treatment_rate=0.16, ticks=700)
    assert before["continued"] == pytest.approx(1.0)
    assert after["rolled_back"] == pytest.approx(1.0)
