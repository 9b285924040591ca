"""The control page in a real browser: Debian's Chromium driven by playwright, against a real
abgate with real agents. Nothing may leave 127.0.0.1, and the console stays clean."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Dialog, Page, async_playwright

from abgate.control.serve import Embedded, embedded
from tests.servers import make_config
from tests.test_rollout import FAST


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed; `make test-servers` installs it")
        pytest.skip("chromium is not installed (run `make test-servers`)")
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield launched
        finally:
            await launched.close()


async def open_page(
    browser: Browser, running: Embedded, width: int = 1280
) -> tuple[Page, list[str], list[str]]:
    page = await browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    outside: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def request(r: Any) -> None:
        if urlsplit(r.url).hostname != "127.0.0.1":
            outside.append(r.url)

    page.on("request", request)
    await page.goto(running.control_url + "/")  # redirects to /ui
    return page, errors, outside


def answer(text: str | None) -> Any:
    async def on_dialog(dialog: Dialog) -> None:
        if text is None:
            await dialog.dismiss()
        else:
            await dialog.accept(text)

    return on_dialog


async def eventually(check: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 (state changed by the browser's requests)
            await asyncio.sleep(0.05)


async def test_the_page_shows_the_experiment_and_acts_on_it(
    browser: Browser, agents: dict[str, str]
) -> None:
    config = make_config(
        agents,
        percentage=10,
        experiment={
            "rollout": {**FAST, "stages": [25, 100], "min_duration": "1h"},
            "shadow": {"percentage": 100, "compare": ["$.decision"]},
        },
    )
    async with embedded(config) as running:
        page, errors, outside = await open_page(browser, running)
        assert page.url.endswith("/ui")
        await page.get_by_role("heading", name="exp").wait_for()
        await page.get_by_text("ML share 10%").wait_for()
        await page.get_by_test_id("shadow").wait_for()  # shadow on: its agreement shows
        # Setting a percentage asks for confirmation and a reason.
        before = running.flags.get("exp").version
        page.once("dialog", answer(None))  # cancelled: nothing changes
        await page.get_by_label("ML percentage of exp").fill("35")
        await page.get_by_role("button", name="Set…").click()
        page.once("dialog", answer("from the browser"))
        await page.get_by_label("ML percentage of exp").fill("35")
        await page.get_by_role("button", name="Set…").click()
        await eventually(lambda: running.flags.get("exp").percentage == 35)
        assert running.flags.get("exp").reason == "from the browser"
        # One write in all: the cancelled click, which came first, wrote nothing.
        assert running.flags.get("exp").version == before + 1
        await page.get_by_text("ML share 35%").wait_for()
        flag_history = page.get_by_test_id("flag-history")
        await flag_history.get_by_text("from the browser").wait_for()  # newest first, with who
        # Start the rollout; its state, stage and gates show up without a reload.
        page.once("dialog", answer("ship it"))
        await page.get_by_role("button", name="Start rollout").click()
        state = page.get_by_test_id("rollout-state")
        await state.filter(has_text="running").wait_for()
        await page.get_by_text("stage 1 of 2: 25%").wait_for()
        page.once("dialog", answer("lunch"))
        await page.get_by_role("button", name="Pause").click()
        await state.filter(has_text="paused").wait_for()
        await page.get_by_text("paused by").first.wait_for()
        # Phone width: nothing wider than the screen.
        await page.set_viewport_size({"width": 375, "height": 800})
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1
        await page.close()  # before the server stops: a poll then would fail, as an error
    assert errors == []
    assert outside == []


async def test_with_a_token_the_page_asks_for_it_and_says_so_on_401(
    browser: Browser, agents: dict[str, str]
) -> None:
    async with embedded(make_config(agents, percentage=10), token="s3cret") as running:
        page, errors, _ = await open_page(browser, running)
        await page.get_by_text("ML share 10%").wait_for()  # reads work without it
        page.once("dialog", answer("no token"))
        await page.get_by_role("button", name="Set…").click()
        await page.get_by_text("needs a token").wait_for()
        assert running.flags.get("exp").percentage == 10
        await page.get_by_label("Token").fill("s3cret")
        await page.get_by_label("Token").press("Tab")  # change event: kept for the session
        page.once("dialog", answer("with the token"))
        await page.get_by_label("ML percentage of exp").fill("20")
        await page.get_by_role("button", name="Set…").click()
        await eventually(lambda: running.flags.get("exp").percentage == 20)
        stored = await page.evaluate("sessionStorage.getItem('abgate-token')")
        assert stored == "s3cret"
        await page.close()  # before the server stops: a poll then would fail, as an error
    assert [e for e in errors if "401" not in e] == []
