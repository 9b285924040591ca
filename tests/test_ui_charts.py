"""The control page's charts in a real browser (Debian's Chromium, playwright) against a real
rollout: each chart drew what the timeline endpoint returned (points, last values), a
decision's marker shows its reason on hover, nothing leaves 127.0.0.1, and screenshots at
desktop and phone widths are saved (ABGATE_TEST_ARTIFACTS, else the test's tmp directory;
their paths are printed)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from aiohttp import ClientSession
from playwright.async_api import Browser, Page

from abgate.control.stats_worker import StatsWorker
from tests.test_rollout import FAST, api, stack, traffic
from tests.test_ui import browser, open_page

__all__ = ["browser"]
PLAN = {**FAST, "stages": [25, 50, {"percentage": 100, "approval": True}]}


class Ticks:
    """The worker's timeline, fed by the test: the worker's own ticks are held back, so the
    page and the API answer from the same series once the test stops adding to it."""

    def __init__(self, worker: StatsWorker) -> None:
        self.worker = worker
        self.record = worker.record

        async def held(reports: Any) -> None:
            return None

        worker.record = held  # type: ignore[method-assign]

    async def tick(self, flush: Any) -> None:
        await flush()
        await self.record(await self.worker.evaluate_all())


def _ms(value: float) -> str:
    """As the page writes a signed difference in ms (charts.js: unitOf)."""
    digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    text = f"{abs(value):,.{digits}f}".rstrip("0").rstrip(".") if digits else f"{abs(value):,.0f}"
    minus = "\N{MINUS SIGN}"  # as Intl writes it
    return ("+" if value > 0 else minus if value < 0 else "") + text + " ms"


async def attribute(page: Page, selector: str, name: str) -> str:
    value = await page.locator(selector).first.get_attribute(name)
    assert value is not None, f"{selector} has no {name}"
    return value


async def text(page: Page, selector: str) -> str:
    """An SVG element's text (inner_text is for HTML elements)."""
    return await page.locator(selector).first.text_content() or ""


def artifacts(tmp_path: Path) -> Path:
    where = Path(os.environ.get("ABGATE_TEST_ARTIFACTS") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


async def test_the_charts_draw_the_timeline_of_a_rollout(
    browser: Browser, session: ClientSession, tmp_path: Path
) -> None:
    async with stack(PLAN) as running, traffic(session, running):
        ticks = Ticks(running.worker)
        flush = running.plane.flush_measurements
        for _ in range(3):  # at 0% first
            await ticks.tick(flush)
        await api(session, running, "POST", "/api/rollouts/exp", {"reason": "ship it"}, 201)
        for _ in range(2000):  # a tick per look, until the stage before 100% waits for a person
            await ticks.tick(flush)
            view = await api(session, running, "GET", "/api/rollouts/exp")
            if view["state"] == "awaiting_approval":
                break
        assert view["state"] == "awaiting_approval"
        await ticks.tick(flush)  # a point of the wait: the gate's need, met
        # Paused, the controller decides nothing more: the page and the API see the same
        # decisions (one recorded in between made the marker count differ).
        await api(session, running, "POST", "/api/rollouts/exp/pause", {"reason": "read"})
        await ticks.tick(flush)  # the last point sees the pause
        timeline: dict[str, Any] = await api(
            session, running, "GET", "/api/experiments/exp/timeline"
        )
        page, errors, outside = await open_page(browser, running)
        await page.locator("[data-chart=ramp]").wait_for()
        points = timeline["points"]
        last = points[-1]

        # 1. The ramp: a step per change of share, ending at 50%; a marker per decision.
        shares = [p["percentage"] for p in points]  # None before the first measurement
        corners = [a for a, b in itertools.pairwise(shares) if a != b]
        steps = sum(1 for share in shares + corners if share is not None)
        ramp = "[data-chart=ramp] [data-series=share]"
        assert int(await attribute(page, ramp, "data-count")) == steps
        assert len((await attribute(page, ramp, "points")).split()) == steps
        assert await text(page, "[data-chart=ramp] [data-last=share]") == "50%"
        assert sorted({s for s in shares if s is not None}) == [0, 25, 50]
        markers = page.locator("[data-chart=ramp] circle.marker")
        assert await markers.count() == len(timeline["events"])
        waiting = next(e for e in timeline["events"] if e["transition"] == "awaiting_approval")
        assert "waiting for approval of 100%" in waiting["reason"]
        tip = page.get_by_test_id("ramp-tip")
        # The pause, drawn over the wait a moment before it: the mouse reads it ...
        paused = markers.filter(has_text="paused (alice): read")
        assert await paused.get_attribute("data-marker") == "pause"
        await paused.hover()
        await tip.filter(has_text="paused (alice): read").wait_for()
        # ... and the keyboard reaches the one under it (markers take the focus); the mouse
        # away first, or the page's next redraw shows the marker under it again.
        await page.mouse.move(0, 0)
        await markers.filter(has_text="waiting for approval").focus()
        await tip.filter(has_text=waiting["reason"]).wait_for()
        eta = await page.get_by_test_id("ramp-eta").inner_text()
        assert eta.startswith("paused, continue: paused by alice: read")
        assert timeline["events"][-1]["transition"] == "paused"

        # 2. The effect of each metric: the estimate, its always-valid band, the line.
        for metric, value in last["metrics"].items():
            chart = f"[data-chart=effect][data-metric={metric}]"
            with_effect = [
                p for p in points if (p["metrics"].get(metric) or {}).get("effect") is not None
            ]
            banded = [p for p in with_effect if p["metrics"][metric]["low"] is not None]
            assert int(await attribute(page, f"{chart} [data-series=effect]", "data-count")) == len(
                with_effect
            )
            assert int(
                await attribute(page, f"{chart} [data-series=interval]", "data-count")
            ) == len(banded)
            boundaries = page.locator(f"{chart} [data-phase-boundary]")
            phases = [p["phase"] for p in points]  # None before the first measurement
            changes = sum(1 for a, b in itertools.pairwise(phases) if a and b != a)
            assert changes == 2  # 0% to 25%, 25% to 50%
            assert await boundaries.count() == changes
            if metric == "latency":
                shown = await text(page, f"{chart} [data-last=effect]")
                assert shown == _ms(value["effect"] * 1000)
                assert value["role"] == "guardrail"
                line = await text(page, f"{chart} [data-last=line]")
                assert line == "margin " + _ms(value["line"] * 1000)

        # 3. Samples against the need of the last stage compared (paused: the controller
        # holds no decision of its own now).
        assert last["rollout"]["needed"] is None
        last = [p for p in points if p["rollout"] and p["rollout"]["needed"]][-1]
        needed = last["rollout"]["needed"]
        for arm in ("control", "treatment"):
            bar = f"[data-chart=samples] [data-bar={arm}]"
            assert int(await attribute(page, bar, "data-value")) == last["samples"][arm]
            label = await text(page, f"[data-chart=samples] [data-label={arm}]")
            assert label.startswith(f"{last['samples'][arm]:,} of {needed[arm]:,} needed")
        assert (
            await page.get_by_test_id("samples-eta").inner_text() == "Enough samples for the gate."
        )

        # 4. Latency p50 and p95 per arm, in ms.
        for arm in ("control", "treatment"):
            answered = [p for p in points if (p["latency_ms"].get(arm) or {}).get("n")]
            assert answered
            for q in ("p50", "p95"):
                series = f'[data-chart=latency] [data-series="{arm} {q}"]'
                assert int(await attribute(page, series, "data-count")) == len(answered)
            label = await text(page, f'[data-chart=latency] [data-last="{arm} p50"]')
            assert label.startswith(f"{arm} p50 ")
            assert label.endswith(" ms")

        # Units a person reads in the table: latency in ms, never 0.001416.
        means = await page.get_by_test_id("mean-latency").inner_text()
        assert means.count(" ms") == 2

        where = artifacts(tmp_path)
        desktop, phone = (
            where / "control-page-charts-desktop.png",
            where / "control-page-charts-phone.png",
        )
        await page.locator("[data-testid=charts]").screenshot(path=str(desktop))
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.locator('[data-chart=ramp][viewBox="0 0 400 190"]').wait_for()  # redrawn
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1
        await page.locator("[data-testid=charts]").screenshot(path=str(phone))
        print(f"screenshots: {desktop} {phone}")
        assert desktop.stat().st_size > 10_000
        assert phone.stat().st_size > 10_000
        await page.close()  # before the server stops: a poll then would fail, as an error
    assert errors == []
    assert outside == []
