"""The report's pictures (control/report_charts.py) and its paragraph for a stakeholder:
rendered from a timeline, parsed back with xml.etree and checked against the numbers; and
`abgate rollout report` after a real rollout writes them beside the markdown."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from abgate.control.report_charts import effect_svg, ramp_svg
from abgate.control.report_summary import stakeholder_summary
from abgate.control.rollout_cli import report
from tests.test_rollout import FAST, api, stack, traffic
from tests.test_ui_charts import Ticks, _ms

SVG = "{http://www.w3.org/2000/svg}"
REASON = "guardrails <non-inferior> & primary not worse"


def _point(t: float, phase: int, share: float, effect: float | None) -> dict[str, Any]:
    metric = {
        "role": "primary",
        "effect": effect,
        "low": None if effect is None else effect - 0.1,
        "high": None if effect is None else effect + 0.1,
        "line": 0.05,
        "p_value": 0.5,
        "status": "ok",
    }
    return {
        "t": t,
        "phase": phase,
        "percentage": share,
        "samples": {"control": 10, "treatment": 10},
        "rollout": None,
        "metrics": {"accuracy": metric},
        "latency_ms": {},
    }


TIMELINE = {
    "name": "exp",
    "arms": {"control": "a", "treatment": "b"},
    "points": [
        _point(1000.0, 1, 5, None),
        _point(1001.0, 1, 5, 0.02),
        _point(1002.0, 2, 25, 0.04),
        _point(1003.0, 2, 25, 0.03),
        _point(1004.0, 3, 50, 0.08),
    ],
    "events": [
        {"time": 1000.0, "actor": "cli", "transition": "started", "decision": "start",
         "change": "stage 0: 5%", "reason": "ship it", "state": "running"},
        {"time": 1002.0, "actor": "rollout-controller", "transition": "running",
         "decision": "continue", "change": "stage 1: 25%", "reason": REASON, "state": "running"},
    ],
}  # fmt: skip


def test_the_summary_says_the_effects_with_their_intervals_and_the_decision() -> None:
    view = {
        "experiment": "exp",
        "state": "rolled_back",
        "started_at": 1000.0,
        "started_by": "alice",
        "reason": "harm on accuracy",
        "stage": {"percentage": 0},
    }
    history = [
        {"time": 1000.0, "actor": "alice", "change": "stage 0: 5%", "reason": "ship it"},
        {"time": 1090.0, "actor": "rc", "change": "stage 1: 25%", "reason": "guardrails ok"},
        {"time": 1100.0, "actor": "rc", "state": "rolled_back", "reason": "harm on accuracy"},
    ]
    impact = {
        "evidence": {"basis": "earlier phases with both arms"},
        "metrics": {
            "accuracy": {
                "improvement_percentage": -12.5,
                "interval": [-20.0, -5.0],  # in %, as the estimate
                "significant": True,
            }
        },
    }
    text = stakeholder_summary(view, history, impact, {"control": "a", "treatment": "b"}, 2000.0)
    assert "from a (control) to b (treatment)" in text
    assert "5% for 1 min 30 s (guardrails ok); 25% for 10 s (harm on accuracy)" in text
    assert "accuracy -12.5% (always-valid interval -20.0% to -5.0%, significant)" in text
    assert text.endswith(
        "Decision: The rollout was rolled back: all traffic is on the control again at 0% "
        "(harm on accuracy)."
    )


def _find(root: ET.Element, attribute: str, value: str) -> ET.Element:
    found = [e for e in root.iter() if e.get(attribute) == value]
    assert len(found) == 1, f"{attribute}={value}: {len(found)}"
    return found[0]


def _ys(polyline: ET.Element) -> list[float]:
    return [float(pair.split(",")[1]) for pair in (polyline.get("points") or "").split()]


def test_the_ramp_draws_each_share_and_marks_each_decision_with_its_reason() -> None:
    root = ET.fromstring(ramp_svg(TIMELINE))
    share = _find(root, "data-series", "share")
    # A step at each change of share: 5 points and two corners.
    assert share.get("data-count") == "7"
    assert len(_ys(share)) == 7
    assert _find(root, "data-last", "share").text == "50%"
    assert _ys(share)[-1] < _ys(share)[0]  # 50% drawn above 5%
    markers = [e for e in root.iter(f"{SVG}circle") if e.get("data-marker")]
    assert [m.get("data-marker") for m in markers] == ["start", "continue"]
    titles = [m.find(f"{SVG}title") for m in markers]
    assert titles[1] is not None
    assert titles[1].text is not None
    assert titles[1].text.endswith(f"stage 1: 25% (rollout-controller): {REASON}")


def test_the_effect_draws_the_estimate_its_band_the_line_and_the_phases() -> None:
    root = ET.fromstring(effect_svg(TIMELINE, "accuracy", "binary"))
    effect = _find(root, "data-series", "effect")
    assert effect.get("data-count") == "4"  # the first look had no estimate yet
    ys = _ys(effect)
    values = [0.02, 0.04, 0.03, 0.08]
    for (y1, y2), (v1, v2) in zip(itertools.pairwise(ys), itertools.pairwise(values), strict=True):
        assert (y1 > y2) == (v2 > v1)  # up is a larger effect
    assert _find(root, "data-last", "effect").text == "+8 pp"  # a rate: percentage points
    assert _find(root, "data-last", "line").text == "min effect +5 pp"
    assert _find(root, "data-series", "interval").get("data-count") == "4"
    boundaries = [e for e in root.iter() if e.get("data-phase-boundary")]
    assert [b.get("data-phase-boundary") for b in boundaries] == ["2", "3"]


async def test_the_report_writes_the_pictures_and_a_summary_beside_the_markdown(
    session: ClientSession, tmp_path: Path
) -> None:
    plan = {**FAST, "stages": [25, {"percentage": 50, "approval": True}, 100]}
    async with stack(plan) as running, traffic(session, running):
        ticks = Ticks(running.worker)
        flush = running.plane.flush_measurements
        await ticks.tick(flush)
        await api(session, running, "POST", "/api/rollouts/exp", {"reason": "ship it"}, 201)
        for _ in range(4000):  # a tick per look, to the end (approving 50% on the way)
            await ticks.tick(flush)
            view = await api(session, running, "GET", "/api/rollouts/exp")
            if view["state"] == "awaiting_approval":
                body = {"stage": 50, "reason": "numbers look fine"}
                await api(session, running, "POST", "/api/rollouts/exp/approve", body)
            if view["state"] == "completed":
                break
        assert view["state"] == "completed"
        await ticks.tick(flush)
        timeline = await api(session, running, "GET", "/api/experiments/exp/timeline")
        output = tmp_path / "reports" / "exp-business-impact.md"
        args = argparse.Namespace(
            url=running.control_url, token=None, experiment="exp", output=str(output)
        )
        written = await asyncio.to_thread(report, args)
    assert written == output
    text = output.read_text()
    ramp = output.with_name("exp-ramp.svg")
    effects = {m: output.with_name(f"exp-effect-{m}.svg") for m in ("error", "latency")}
    assert "![ramp](exp-ramp.svg)" in text
    for metric, path in effects.items():
        assert f"![effect on {metric}]({path.name})" in text
    # The ramp as the timeline has it: the shares, and every decision with its reason.
    root = ET.parse(ramp).getroot()
    shares = [p["percentage"] for p in timeline["points"]]
    corners = [a for a, b in itertools.pairwise(shares) if a != b]
    share = _find(root, "data-series", "share")
    assert share.get("data-count") == str(sum(1 for s in shares + corners if s is not None))
    assert _find(root, "data-last", "share").text == "100%"
    markers = [
        (m.findtext(f"{SVG}title") or "", m.get("data-marker"))
        for m in root.iter(f"{SVG}circle")
        if m.get("data-marker")
    ]
    assert len(markers) == len(timeline["events"])
    [approval] = [(t, kind) for t, kind in markers if "approved 50% (alice)" in t]
    assert approval[1] == "approval"
    assert approval[0].endswith("numbers look fine")
    assert [kind for _, kind in markers].count("start") == 1
    # The latency guardrail: one estimate per look that had one, its margin below zero.
    root = ET.parse(effects["latency"]).getroot()
    looks = [p["metrics"]["latency"] for p in timeline["points"] if "latency" in p["metrics"]]
    estimated = [m for m in looks if m["effect"] is not None]
    assert _find(root, "data-series", "effect").get("data-count") == str(len(estimated))
    margin = _find(root, "data-last", "line").text or ""
    assert margin.startswith("margin \N{MINUS SIGN}")
    assert margin.endswith(" ms")
    # The paragraph: what, each stage with how long and why, the effects, the decision.
    summary = text.split("## Summary\n\n", 1)[1].split("\n", 1)[0]
    assert "from control (control) to treatment (treatment)" in summary
    for stage in ("25% for ", "50% for ", "100% for "):
        assert stage in summary
    assert "25% for " in summary
    assert "(50% approved by alice: numbers look fine)" in summary
    looks = [m for m in looks if m["effect"] is not None]
    assert f"latency {_ms(looks[-1]['effect'] * 1000)} (interval " in summary
    assert "accuracy: not measured yet" in summary  # no outcomes were reported
    assert summary.endswith(
        "Decision: The treatment now serves all traffic at 100% "
        f"({timeline['points'][-1]['rollout']['reason']})."
    )
