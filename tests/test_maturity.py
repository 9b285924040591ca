"""Issue 26 item 1: a maturity window per metric. An outcome counts once its decision is as
old as the metric's window, so early looks are not biased towards fast outcomes."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession

from abgate.config import parse_config
from abgate.config.errors import ConfigError
from abgate.control.maturing import Maturing, MaturingFull, mature_at
from abgate.control.serve import embedded
from abgate.state.measurements import UNCLUSTERED

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
        "1.5, '250ms' or '5s', got 'soon'"
    ]
    from_answer = GOOD.replace("maturity: %s", 'json: "$.p", maturity: 1h')
    assert problems(from_answer) == [
        "experiments.e.metrics.converted.maturity (line 11): applies to outcomes posted "
        "after the decision; converted is read from each answer"
    ]


def test_outcomes_wait_for_their_decision_and_go_back_if_the_store_fails() -> None:
    assert mature_at(100.0, None, 150.0) is None
    assert mature_at(100.0, 60.0, 170.0) is None  # already mature: counts at once
    assert mature_at(100.0, 60.0, 150.0) == 160.0
    maturing = Maturing(limit=3)
    key = ("e", 1, "b", "converted", UNCLUSTERED)
    maturing.hold(key, 1.0, 160.0)
    maturing.hold(key, 0.0, 200.0)
    with maturing.due(150.0) as due:
        assert due == {}

    def store_fails() -> None:
        with maturing.due(170.0) as due:
            assert due[key].count == 1
            raise RuntimeError("store down")

    with pytest.raises(RuntimeError):
        store_fails()
    assert len(maturing) == 2  # put back
    with maturing.due(300.0) as due:
        assert (due[key].count, due[key].total) == (2, 1.0)
    assert len(maturing) == 0
    maturing.room(3)
    with pytest.raises(MaturingFull, match="at most 3"):
        maturing.room(4)


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
        assert len(stack.worker.maturing) == 1
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
