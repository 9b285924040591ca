"""`abgate rollout start|status|approve|pause|resume|abort|promote|history|report EXPERIMENT`.

The control API from a shell (--url / ABGATE_CONTROL_URL, --token / ABGATE_CONTROL_TOKEN).
`status --watch` redraws a live view (stage bar, samples against samples needed, ETA, each
gate) on a terminal, and prints one line per change otherwise. `report` writes a markdown
business-impact report to reports/EXPERIMENT-business-impact.md, with a paragraph for a
stakeholder and its pictures beside it as SVG files (EXPERIMENT-ramp.svg,
EXPERIMENT-effect-METRIC.svg).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from abgate.control.flags_cli import CONNECTION, DEFAULT_URL, ApiCallFailed, call
from abgate.control.report_charts import write_charts
from abgate.control.report_summary import duration, stakeholder_summary

FINISHED = {"completed": 0, "rolled_back": 3, "aborted": 4}  # state -> exit code of --watch
ESCALATED_EXIT = 5
APPROVAL_EXIT = 6  # --watch --exit-on-approval: a stage waits for a person


def add_rollout_parser(commands: Any) -> None:
    rollout = commands.add_parser(
        "rollout",
        help="start, follow and steer staged rollouts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rollout.add_argument("--url", default=os.environ.get("ABGATE_CONTROL_URL", DEFAULT_URL))
    rollout.add_argument("--token", default=os.environ.get("ABGATE_CONTROL_TOKEN"))
    actions = rollout.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("start", "start a rollout with the config's plan"),
        ("status", "where the rollout stands"),
        ("approve", "approve the stage waiting for a person"),
        ("pause", "pause (the percentage stays)"),
        ("resume", "resume a paused or escalated rollout"),
        ("abort", "abort: the treatment goes to 0%%"),
        ("promote", "skip to the next stage (recorded as an override)"),
        ("history", "every decision, newest first"),
        ("report", "write reports/EXPERIMENT-business-impact.md"),
    ):
        action = actions.add_parser(
            name, help=text, description=text.replace("%%", "%"), parents=[CONNECTION]
        )
        action.add_argument(
            "experiment",
            nargs="?",
            default="current",
            help="default: current (the rollout under way, else control.default_experiment)",
        )
        if name not in ("status", "history", "report"):
            action.add_argument("--reason", default="")
        if name == "start":
            action.add_argument(
                "--if-needed",
                action="store_true",
                help="a rollout under way, or one completed, is not an error: show it "
                "(only a rolled-back or aborted rollout, or none, is started anew)",
            )
        if name == "status":
            action.add_argument("--watch", action="store_true", help="redraw until it ends")
            action.add_argument("--interval", type=float, default=1.0)
            action.add_argument(
                "--exit-on-approval",
                action="store_true",
                help=f"with --watch: exit {APPROVAL_EXIT} when a stage waits for a person's "
                "approval (a script decides, then watches again)",
            )
        if name == "approve":
            action.add_argument("--stage", type=float, default=None, help="its percentage")
        if name == "history":
            action.add_argument("--limit", type=int, default=50)
        if name == "report":
            action.add_argument("--output", default=None)


def _bar(view: dict[str, Any]) -> str:
    current = view["stage"]["index"]
    names = [f"{p:g}%" for p in view["stages"]]
    if view["stage"].get("holdout"):  # the last stage runs with control kept, then 100%
        names[-1] = f"{100 - view['stage']['holdout']:g}% holdout -> 100%"
    return " -> ".join(f"[{n}]" if i == current else n for i, n in enumerate(names))


def _at(stage: dict[str, Any]) -> str:
    """The stage's live share, and its phase when it is the holdout."""
    return f"{stage['percentage']:g}%" + (" (holdout)" if stage.get("phase") == "holdout" else "")


def _duration(seconds: float | None) -> str:
    """As the gates' reasons write it ("about 2 min 23 s more"): one way on one screen."""
    return "not known yet" if seconds is None else duration(seconds)


def render(view: dict[str, Any]) -> list[str]:
    """What is known: no decision before the gates' first one, no eta once it has ended."""
    decision, reason = view["decision"], view["reason"]
    lines = [
        f"{view['experiment']}: {view['state']}  {_bar(view)}",
        f"  decision: {decision}: {reason}"
        if decision
        else "  decision: none yet" + (f" ({reason})" if reason else ""),
    ]
    if view["state"] == "running":
        lines.append(f"  eta: {_duration(view['eta_seconds'])}")
    elif view["state"] not in FINISHED:
        lines.append(f"  eta: none while {view['state'].replace('_', ' ')}")
    for gate in view["gates"]:
        lines.append(f"  {gate['status']:>5}  {gate['name']}: {gate['detail']}")
        if gate["name"] == "samples" and gate.get("needed"):
            for arm, have in gate["have"].items():
                lines.append(f"         {arm}: {have:,} of {gate['needed'][arm]:,}")
    return lines


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def watch(args: argparse.Namespace) -> int:
    """Until the rollout ends (exit 0 completed, 3 rolled back, 4 aborted) or escalates (5);
    with --exit-on-approval also when a stage waits for approval (6)."""
    path = f"/api/rollouts/{args.experiment}"
    last: tuple[str, str] | None = None
    terminal = sys.stdout.isatty()
    while True:
        view = call(args, "GET", path)
        if terminal:
            sys.stdout.write("\x1b[H\x1b[J" + "\n".join(render(view)) + "\n")
            sys.stdout.flush()
        elif (view["state"], view["reason"]) != last:
            stage = _at(view["stage"])
            print(f"{_iso(time.time())} {view['state']} {stage} {view['reason']}", flush=True)
        last = (view["state"], view["reason"])
        if view["state"] in FINISHED:
            return FINISHED[view["state"]]
        if view["state"] == "escalated":
            return ESCALATED_EXIT
        if view["state"] == "awaiting_approval" and args.exit_on_approval:
            return APPROVAL_EXIT
        time.sleep(args.interval)


def report(args: argparse.Namespace) -> Path:
    view = call(args, "GET", f"/api/rollouts/{args.experiment}")
    name = view["experiment"]  # `current` resolved
    history = call(args, "GET", f"/api/rollouts/{name}/history?limit=10000")["history"]
    impact = call(args, "GET", f"/api/metrics/{name}/business-impact")
    evidence = impact.get("evidence") or {}
    phases = ", ".join(
        f"phase {p['id']} at {p['percentage']:g}%" for p in evidence.get("phases", [])
    )
    output = Path(args.output or f"reports/{name}-business-impact.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    timeline = call(args, "GET", f"/api/experiments/{name}/timeline")
    declared = call(args, "GET", f"/api/experiments/{name}").get("metrics") or []
    kinds = {m["name"]: m["type"] for m in declared}
    charts = write_charts(timeline, output, kinds)
    summary = stakeholder_summary(
        view, history, impact, timeline["arms"], time.time(), timeline, kinds
    )
    lines = [
        f"# Business impact: {name}",
        "",
        f"State **{view['state']}** at {_at(view['stage'])} ({view['reason']}).",
        f"Started {_iso(view['started_at'])} by {view['started_by']}.",
        "",
        "## Summary",
        "",
        summary,
        "",
        "## Pictures",
        "",
        "From the statistics worker's timeline "
        f"({len(timeline['points']):,} looks; the effect is treatment minus control at each "
        "look, signed so that up is better, with its always-valid interval as a band, the "
        "plan's margin or minimum effect as a dashed line, and a dotted line where a phase "
        "began). Hover a marker of the ramp for the decision's reason.",
        "",
        *(f"![{what}]({path.name})" for what, path in charts.items()),
        "",
        "## Business metrics (treatment against control)",
        "",
        f"Measured on the {evidence.get('basis', 'current phase')}"
        + (f": {phases}" if phases else "")
        + " (several phases are combined by precision weighting, never pooled). Intervals "
        "and p-values are always valid (sequential), as the gates read them.",
        "",
        "| metric | improvement | interval | p-value | significant | samples (control, "
        "treatment) |",
        "|---|---|---|---|---|---|",
    ]
    for metric, row in impact["metrics"].items():
        low, high = row["interval"] or (None, None)
        interval = f"[{low:+.2f}%, {high:+.2f}%]" if low is not None and high is not None else "-"
        improvement = row["improvement_percentage"]
        shown = f"{improvement:+.2f}%" if improvement is not None else "-"
        p_value = row.get("p_value")
        lines.append(
            f"| {metric} | {shown} | {interval} | "
            f"{f'{p_value:.2g}' if p_value is not None else '-'} | "
            f"{'yes' if row['significant'] else 'no'} | "
            f"{row['n']['control']:,}, {row['n']['treatment']:,} |"
        )
    lines += [
        "",
        "## Stages, decisions and approvals",
        "",
        "| time (UTC) | actor | state | change | decision | reason |",
        "|---|---|---|---|---|---|",
    ]
    for entry in reversed(history):
        if not (entry.get("transition") or entry.get("change")):
            continue
        if entry["time"] < view["started_at"]:
            continue  # an earlier rollout of the same experiment
        reason = str(entry.get("reason", "")).replace("|", "/")
        lines.append(
            f"| {_iso(entry['time'])} | {entry['actor']} | {entry.get('state', '')} | "
            f"{entry.get('change') or ''} | {entry.get('decision', '')} | {reason} |"
        )
    output.write_text("\n".join(lines) + "\n")
    return output


def _run(args: argparse.Namespace) -> int:
    name = args.experiment
    base = f"/api/rollouts/{name}"
    if args.action == "status":
        if args.watch:
            return watch(args)
        print("\n".join(render(call(args, "GET", base))))
    elif args.action == "history":
        for entry in call(args, "GET", f"{base}/history?limit={args.limit}")["history"]:
            what = entry.get("change") or entry.get("transition") or entry.get("decision")
            print(f"{_iso(entry['time'])}\t{entry['actor']}\t{what}\t{entry.get('reason', '')}")
    elif args.action == "report":
        print(f"wrote {report(args)}")
    elif args.action == "start" and args.if_needed and (held := _held(args, base)):
        print("\n".join(render(held)))
    else:
        body: dict[str, Any] = {"reason": args.reason}
        if args.action == "approve" and args.stage is not None:
            body["stage"] = args.stage
        path = base if args.action == "start" else f"{base}/{args.action}"
        print("\n".join(render(call(args, "POST", path, body))))
    return 0


def _held(args: argparse.Namespace, base: str) -> dict[str, Any] | None:
    """The rollout under way, or completed, if there is one. A completed rollout is not
    started again (that would take the treatment back to the first stage): running the
    automation once more after it finished, or racing its end, changes nothing."""
    try:
        view: dict[str, Any] = call(args, "GET", base)
    except ApiCallFailed as exc:
        if ": 404 " in str(exc):
            return None
        raise
    return None if view["state"] in ("rolled_back", "aborted") else view


def run_rollout(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ApiCallFailed as exc:
        print(f"abgate rollout: {exc}", file=sys.stderr)
        return 1
