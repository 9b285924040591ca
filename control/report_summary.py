"""The report's paragraph for a stakeholder: what was rolled out, how long each stage took and
why it ended, the measured effects with their intervals, and the decision. Plain words from
the rollout's history and the business-impact numbers (no statistics computed here)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from abgate.control.metric_units import unit_of


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def stages(
    view: dict[str, Any], history: list[dict[str, Any]], now: float
) -> list[tuple[str, float, str]]:
    """(percentage, seconds, why it ended) of each stage of this rollout, oldest first; the
    stage under way ends `now` and says what it waits for."""
    entries = sorted(
        (e for e in history if e["time"] >= view["started_at"]), key=lambda e: e["time"]
    )
    starts = [e for e in entries if str(e.get("change") or "").startswith("stage ")]
    ends = [e for e in entries if e.get("state") in ("completed", "rolled_back", "aborted")]
    out = []
    for i, entry in enumerate(starts):
        share = str(entry["change"]).split(": ", 1)[-1]
        if i + 1 < len(starts):
            following = starts[i + 1]
            approvals = [
                e
                for e in entries
                if entry["time"] <= e["time"] <= following["time"]
                and str(e.get("change") or "").startswith("approved")
            ]
            why = str(following.get("reason") or "")
            if approvals:
                approval = approvals[-1]
                what = str(approval["change"]).removeprefix("approved ")
                why = f"{what} approved by {approval['actor']}: {approval.get('reason')}"
            out.append((share, following["time"] - entry["time"], why))
        elif ends:
            out.append((share, ends[0]["time"] - entry["time"], str(ends[0].get("reason") or "")))
        else:
            out.append((share, now - entry["time"], f"under way: {view['reason']}"))
    return out


def _effect(metric: str, row: dict[str, Any]) -> str:
    improvement = row.get("improvement_percentage")
    if improvement is None:
        return f"{metric}: not measured yet"
    text = f"{metric} {improvement:+.1f}%"
    interval = row.get("interval")
    if interval and None not in interval:
        text += f" (always-valid interval {interval[0]:+.1f}% to {interval[1]:+.1f}%"
        text += ", significant)" if row.get("significant") else ", not significant)"
    return text


def _last_looks(timeline: dict[str, Any], kinds: dict[str, str] | None = None) -> list[str]:
    """The primary metric's and each guardrail's last estimate on the timeline, in its unit,
    with its always-valid interval and the plan's line."""
    out = []
    points = timeline.get("points") or []
    names = sorted({m for p in points for m in p["metrics"]})
    for metric in names:
        looks = [p["metrics"][metric] for p in points if metric in p["metrics"]]
        estimated = [m for m in looks if m["effect"] is not None and m["role"] != "other"]
        if not estimated:
            continue
        last = estimated[-1]
        scale, show = unit_of(metric, (kinds or {}).get(metric))
        text = f"{metric} {show(last['effect'] * scale)}"
        if last["low"] is not None and last["high"] is not None:
            text += f" (interval {show(last['low'] * scale)} to {show(last['high'] * scale)}"
            if last["line"] is not None:
                what = "minimum effect" if last["role"] == "primary" else "margin"
                text += f", {what} {show(last['line'] * scale)}"
            text += ")"
        out.append(text)
    return out


DECISIONS = {
    "completed": "The treatment now serves all traffic",
    "rolled_back": "The rollout was rolled back: all traffic is on the control again",
    "aborted": "The rollout was aborted: all traffic is on the control again",
}


def stakeholder_summary(
    view: dict[str, Any],
    history: list[dict[str, Any]],
    impact: dict[str, Any],
    arms: dict[str, str],
    now: float,
    timeline: dict[str, Any] | None = None,
    kinds: dict[str, str] | None = None,
) -> str:
    """One paragraph; positive improvements are better for the treatment."""
    name = view["experiment"]
    parts = [
        f"The {name} rollout moved traffic from {arms.get('control', 'control')} (control) "
        f"to {arms.get('treatment', 'treatment')} (treatment) in stages; "
        f"{view['started_by']} started it at {_iso(view['started_at'])}."
    ]
    steps = stages(view, history, now)
    if steps:
        parts.append(
            "Stages: "
            + "; ".join(f"{share} for {duration(s)} ({why})" for share, s, why in steps)
            + "."
        )
    effects = [_effect(m, row) for m, row in (impact.get("metrics") or {}).items()]
    if effects:
        basis = (impact.get("evidence") or {}).get("basis", "current phase")
        parts.append(
            f"Measured effects of the treatment against the control (on the {basis}; "
            f"positive is better): " + "; ".join(effects) + "."
        )
    guards = _last_looks(timeline or {}, kinds)
    if guards:
        parts.append(
            "At the last look with both arms (the gates' comparison, current phase then): "
            + "; ".join(guards)
            + "."
        )
    decision = DECISIONS.get(view["state"], f"The rollout is {view['state'].replace('_', ' ')}")
    parts.append(f"Decision: {decision} at {view['stage']['percentage']:g}% ({view['reason']}).")
    return " ".join(parts)
