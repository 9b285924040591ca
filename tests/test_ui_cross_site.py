"""A page on another origin, in a real Chromium, tries to drive the control API: a form that
posts JSON-shaped text/plain (the classic trick) and a no-cors fetch. Both are refused, and
nothing changes; the control page itself (its own origin) still writes."""

from __future__ import annotations

import pytest
from aiohttp import web
from playwright.async_api import Browser

from abgate.control.serve import embedded
from tests.servers import make_config, serve_app
from tests.test_ui import answer, browser, eventually, open_page

__all__ = ["browser"]  # the fixture, shared with the control page's tests

ATTACK = """<!doctype html>
<form id="form" method="POST" action="{api}" enctype="text/plain">
  <input name='{{"percentage": 100, "reason": "' value='"}}'>
</form>
<script>
  async function post() {{
    await fetch("{api}", {{method: "POST", mode: "no-cors",
                          headers: {{"Content-Type": "text/plain"}},
                          body: '{{"percentage": 100}}'}}).catch(() => null);
  }}
</script>
"""


@pytest.mark.parametrize(
    ("page_host", "site"),
    [("localhost", "cross-site"), ("127.0.0.1", "same-site")],  # another port: same site
)
async def test_a_page_on_another_origin_cannot_write(
    browser: Browser, agents: dict[str, str], page_host: str, site: str
) -> None:
    async with embedded(make_config(agents)) as running:
        api = f"{running.control_url}/api/flags/exp"

        async def attack_page(request: web.Request) -> web.Response:
            return web.Response(text=ATTACK.format(api=api), content_type="text/html")

        app = web.Application()
        app.router.add_get("/", attack_page)
        async with serve_app(app) as attacker:
            page = await browser.new_page()
            await page.goto(attacker.replace("127.0.0.1", page_host) + "/")
            async with page.expect_response(api) as fetched:
                await page.evaluate("post()")
            assert (await fetched.value).status == 403
            async with page.expect_response(api) as submitted:
                await page.evaluate("document.getElementById('form').submit()")
            refusal = await submitted.value
            assert refusal.status == 403
            assert f"cross-site write refused (Sec-Fetch-Site: {site})" in await refusal.text()
        assert running.flags.get("exp").percentage == 10
        assert running.flags.get("exp").version == 1  # not written at all

        # The control page, on the API's own origin, writes as before.
        own, errors, _ = await open_page(browser, running)
        await own.get_by_text("ML share 10%").wait_for()
        own.once("dialog", answer("from the page"))
        await own.get_by_label("ML percentage of exp").fill("35")
        await own.get_by_role("button", name="Set…").click()
        await eventually(lambda: running.flags.get("exp").percentage == 35)
        assert errors == []
