"""The report's pictures: the ramp and each metric's effect over time, as SVG files written
beside reports/EXPERIMENT-business-impact.md, drawn from the timeline endpoint's answer
(control/timeline.py) as the control page draws them (control/ui/charts.js).

Built with xml.etree, so every reason and name is escaped; readable without a browser's
script (a decision's reason is its marker's <title>). Each series carries `data-series` and
`data-count`, and its last value is written at its end, so a test (or a person) can check a
picture against the numbers.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from abgate.control.metric_units import unit_of

W, H = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 130, 16, 30
COLORS = {
    "share": "#0969da",
    "effect": "#0969da",
    "band": "#0969da33",
    "primary": "#1a7f37",
    "guardrail": "#cf222e",
    "other": "#59636e",
    "start": "#0969da",
    "continue": "#1a7f37",
    "hold": "#9a6700",
    "rollback": "#cf222e",
    "approval": "#8250df",
    "pause": "#24292f",
    "phase": "#8250df",
}
LEGEND = ("start", "continue", "hold", "approval", "pause", "rollback")


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


class _Scale:
    def __init__(self, low: float, high: float, start: float, end: float) -> None:
        if not high > low:  # a constant still draws
            pad = abs(low) * 0.1 or 1.0
            low, high = low - pad, high + pad
        self.low, self.high, self.start, self.end = low, high, start, end

    def __call__(self, value: float) -> float:
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)


def _svg(label: str, kind: str) -> ET.Element:
    svg = ET.Element(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "viewBox": f"0 0 {W} {H}",
            "width": str(W),
            "height": str(H),
            "role": "img",
            "aria-label": label,
            "data-chart": kind,
            "font-family": "system-ui, sans-serif",
        },
    )
    ET.SubElement(svg, "title").text = label
    ET.SubElement(svg, "rect", {"width": str(W), "height": str(H), "fill": "#ffffff"})
    return svg


def _text(parent: ET.Element, x: float, y: float, text: str, **attrs: str) -> ET.Element:
    node = ET.SubElement(
        parent,
        "text",
        {"x": f"{x:.1f}", "y": f"{y:.1f}", "font-size": "11", "fill": "#59636e", **attrs},
    )
    node.text = text
    return node


def _axes(
    svg: ET.Element, x: _Scale, y: _Scale, show: Callable[[float], str], caption: str
) -> None:
    for value in (y.low, (y.low + y.high) / 2, y.high):
        ET.SubElement(
            svg,
            "line",
            {
                "x1": str(LEFT),
                "x2": str(W - RIGHT),
                "y1": f"{y(value):.1f}",
                "y2": f"{y(value):.1f}",
                "stroke": "#d1d9e0",
            },
        )
        _text(svg, LEFT - 4, y(value) + 4, show(value), **{"text-anchor": "end"})
    _text(svg, LEFT, H - 8, f"{_clock(x.low)} UTC")
    _text(svg, W - RIGHT, H - 8, f"{_clock(x.high)} UTC", **{"text-anchor": "end"})
    _text(svg, LEFT, TOP - 4, caption, **{"fill": "#1b1f24", "font-weight": "600"})


def _series(
    svg: ET.Element,
    name: str,
    pairs: Sequence[tuple[float, float | None]],
    x: _Scale,
    y: _Scale,
    label: Callable[[float], str],
    used: list[float],
    **attrs: str,
) -> int:
    drawn = [(t, v) for t, v in pairs if v is not None and math.isfinite(v)]
    ET.SubElement(
        svg,
        "polyline",
        {
            "fill": "none",
            "stroke-width": "2",
            **attrs,
            "data-series": name,
            "data-count": str(len(drawn)),
            "points": " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in drawn),
        },
    )
    if len(drawn) == 1:  # a line of one point draws nothing: a dot instead
        t, v = drawn[0]
        dot = {"cx": f"{x(t):.1f}", "cy": f"{y(v):.1f}", "r": "3"}
        ET.SubElement(svg, "circle", {**dot, "fill": attrs.get("stroke", "#1b1f24")})
    if drawn:
        t, v = drawn[-1]
        at = y(v) + 4
        while any(abs(u - at) < 12 for u in used):  # labels of series ending close together
            at += 12
        used.append(at)
        _text(svg, x(t) + 4, at, label(v), fill=attrs.get("stroke", "#1b1f24"))
        svg[-1].set("data-last", name)
    return len(drawn)


def _time(points: Sequence[dict[str, Any]]) -> _Scale:
    ts = [p["t"] for p in points] or [0.0, 1.0]
    return _Scale(ts[0], ts[-1], LEFT, W - RIGHT)


def _kind(event: dict[str, Any]) -> str:
    """What a decision's marker shows (as control/ui/charts.js: markerKind)."""
    if event.get("transition") == "started":
        return "start"
    if event.get("state") in ("rolled_back", "aborted") or event.get("decision") == "rollback":
        return "rollback"
    if str(event.get("change") or "").startswith("approved"):
        return "approval"
    if event.get("transition") in ("paused", "escalated"):
        return "pause"
    decision = str(event.get("decision"))
    if decision in ("continue", "complete"):
        return "continue"
    return "hold" if decision == "hold" else "other"


def ramp_svg(timeline: dict[str, Any]) -> str:
    """The treatment's share over time, a step per stage, each decision a marker whose
    <title> says what happened, who did it and why."""
    points = timeline["points"]
    svg = _svg(f"{timeline['name']}: treatment share over time, with each decision", "ramp")
    x, y = _time(points), _Scale(0, 100, H - BOTTOM, TOP + 8)
    _axes(svg, x, y, lambda v: f"{v:g}%", "Treatment share")
    steps: list[tuple[float, float | None]] = []
    for i, point in enumerate(points):
        if i and point["percentage"] != points[i - 1]["percentage"]:
            steps.append((point["t"], points[i - 1]["percentage"]))
        steps.append((point["t"], point["percentage"]))
    _series(svg, "share", steps, x, y, lambda v: f"{v:g}%", [], stroke=COLORS["share"])

    def share(t: float) -> float:
        value = points[0]["percentage"] if points else 0.0
        for point in points:
            if point["t"] <= t:
                value = point["percentage"]
        return value or 0.0

    # Holds below, stage changes and rollbacks on top: a promotion is followed within a tick
    # by the new stage's first hold, which must not hide it.
    layer = {"hold": 0, "other": 1, "pause": 2, "start": 2, "continue": 2, "approval": 3}
    layer["rollback"] = 4
    for i, kind in enumerate(LEGEND):  # which colour is which decision
        lx, ly = W - RIGHT + 14, TOP + 44 + i * 16
        ET.SubElement(
            svg, "circle", {"cx": str(lx), "cy": str(ly - 4), "r": "5", "fill": COLORS[kind]}
        )
        _text(svg, lx + 10, ly, kind)
    for event in sorted(_in_range(timeline), key=lambda e: layer[_kind(e)]):
        kind = _kind(event)
        marker = ET.SubElement(
            svg,
            "circle",
            {
                "cx": f"{x(min(event['time'], x.high)):.1f}",
                "cy": f"{y(share(event['time'])):.1f}",
                "r": "4.5" if kind == "hold" else "6",
                "fill": COLORS[kind],
                "stroke": "#ffffff",
                "data-marker": kind,
            },
        )
        what = event.get("change") or event.get("transition") or event.get("decision") or ""
        ET.SubElement(
            marker, "title"
        ).text = f"{_clock(event['time'])} UTC {what} ({event.get('actor')}): {event.get('reason')}"
    return ET.tostring(svg, encoding="unicode")


def _in_range(timeline: dict[str, Any]) -> list[dict[str, Any]]:
    points = timeline["points"]
    if not points:
        return []
    first, last = points[0]["t"], points[-1]["t"]
    return [e for e in timeline["events"] if first <= e["time"] <= last + 60]


def effect_svg(timeline: dict[str, Any], metric: str, kind: str | None = None) -> str:
    """One metric's estimated difference at each look (up is better), its always-valid band,
    the plan's line (minimum effect or margin), zero, and where each phase began."""
    points = [p for p in timeline["points"] if metric in p["metrics"]]
    scale, show = unit_of(metric, kind)

    def at(point: dict[str, Any], key: str) -> float | None:
        value = point["metrics"][metric][key]
        return None if value is None else value * scale

    role = points[-1]["metrics"][metric]["role"] if points else "other"
    svg = _svg(f"{timeline['name']}: effect on {metric} over time (up is better)", "effect")
    svg.set("data-metric", metric)
    x = _time(timeline["points"])
    values = [
        v for p in points for k in ("low", "high", "effect", "line") if (v := at(p, k)) is not None
    ]
    y = _Scale(min([0.0, *values]), max([0.0, *values]), H - BOTTOM, TOP + 8)
    _axes(svg, x, y, show, f"Effect on {metric} ({role}), treatment minus control")
    previous = None
    for point in timeline["points"]:
        if previous is not None and point["phase"] != previous:
            px = f"{x(point['t']):.1f}"
            ET.SubElement(
                svg,
                "line",
                {
                    "x1": px,
                    "x2": px,
                    "y1": str(TOP + 8),
                    "y2": str(H - BOTTOM),
                    "stroke": COLORS["phase"],
                    "stroke-dasharray": "2 3",
                    "data-phase-boundary": str(point["phase"]),
                },
            )
            _text(svg, x(point["t"]) + 3, TOP + 18, f"{point['percentage']:g}%", fill="#8250df")
        previous = point["phase"]
    banded = [p for p in points if at(p, "low") is not None and at(p, "high") is not None]
    outline = [(p["t"], at(p, "high")) for p in banded] + [
        (p["t"], at(p, "low")) for p in reversed(banded)
    ]
    ET.SubElement(
        svg,
        "polygon",
        {
            "points": " ".join(f"{x(t):.1f},{y(v or 0):.1f}" for t, v in outline),
            "fill": COLORS["band"],
            "data-series": "interval",
            "data-count": str(len(banded)),
        },
    )
    if len(banded) == 1:  # one look: its interval as a bar
        px = f"{x(banded[0]['t']):.1f}"
        ends = {
            "y1": f"{y(at(banded[0], 'low') or 0):.1f}",
            "y2": f"{y(at(banded[0], 'high') or 0):.1f}",
        }
        ET.SubElement(
            svg,
            "line",
            {"x1": px, "x2": px, **ends, "stroke": COLORS["effect"], "stroke-width": "6",
             "stroke-opacity": "0.3"},
        )  # fmt: skip
    zero = f"{y(0):.1f}"
    ET.SubElement(
        svg,
        "line",
        {"x1": str(LEFT), "x2": str(W - RIGHT), "y1": zero, "y2": zero, "stroke": "#1b1f24"},
    )
    what = "min effect" if role == "primary" else "margin"
    used: list[float] = []
    _series(
        svg,
        "line",
        [(p["t"], at(p, "line")) for p in points],
        x,
        y,
        lambda v: f"{what} {show(v)}",
        used,
        stroke=COLORS.get(role, COLORS["other"]),
        **{"stroke-dasharray": "6 4"},
    )
    _series(
        svg,
        "effect",
        [(p["t"], at(p, "effect")) for p in points],
        x,
        y,
        show,
        used,
        stroke=COLORS["effect"],
    )
    return ET.tostring(svg, encoding="unicode")


def write_charts(
    timeline: dict[str, Any], markdown: Path, kinds: dict[str, str] | None = None
) -> dict[str, Path]:
    """The SVG files beside `markdown` (EXPERIMENT-ramp.svg, EXPERIMENT-effect-METRIC.svg);
    what each shows -> its path. `kinds`: metric -> type, for its unit."""
    stem = markdown.name.removesuffix(".md").removesuffix("-business-impact")
    written: dict[str, Path] = {}
    ramp = markdown.with_name(f"{stem}-ramp.svg")
    ramp.write_text(ramp_svg(timeline) + "\n")
    written["ramp"] = ramp
    last = timeline["points"][-1]["metrics"] if timeline["points"] else {}
    seen = {m for p in timeline["points"] for m in p["metrics"]}
    order = {"primary": 0, "guardrail": 1, "other": 2}
    for metric in sorted(seen, key=lambda m: (order[last.get(m, {}).get("role", "other")], m)):
        path = markdown.with_name(f"{stem}-effect-{metric}.svg")
        path.write_text(effect_svg(timeline, metric, (kinds or {}).get(metric)) + "\n")
        written[f"effect on {metric}"] = path
    return written
