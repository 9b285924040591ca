"""The control page shows the values the API gives: a metric the API calls significant reads
"significant" on the page (it read `significant` where the API had only
`sequential.significant`, so accuracy at Holm p = 2e-20 showed "not significant")."""

from __future__ import annotations

from aiohttp import ClientSession
from playwright.async_api import Browser

from abgate.control.serve import embedded
from tests.servers import make_config
from tests.test_ui import browser, open_page

__all__ = ["browser"]


def outcomes(arm: str, rate: float, users: int = 400) -> list[dict[str, object]]:
    return [
        {
            "experiment": "exp",
            "arm": arm,
            "metric": metric,
            "value": value,
            "phase": 1,
            "user": f"{arm}-{user}",
        }
        for user in range(users)
        for metric, value in (("accuracy", user < rate * users), ("satisfaction", 3 + user % 3))
    ]


async def test_the_significance_column_reads_the_apis_values(
    browser: Browser, agents: dict[str, str], session: ClientSession
) -> None:
    async with embedded(make_config(agents, percentage=50)) as running:
        api = running.control_url
        for user in range(40):  # decisions first: a phase exists once the proxy has measured
            async with session.get(
                f"{running.proxy_url}/api/agent/a/decide", headers={"X-User-Id": f"u{user}"}
            ) as response:
                await response.read()
        await running.plane.flush_measurements()
        batch = outcomes("control", 0.6) + outcomes("treatment", 0.9)
        async with session.post(f"{api}/api/outcomes", json=batch) as response:
            assert response.status == 200
        await running.worker.evaluate_all()
        async with session.get(f"{api}/api/experiments/exp/significance") as response:
            metrics = (await response.json())["metrics"]
        assert metrics["accuracy"]["significant"] is True  # top level, beside sequential's
        assert metrics["accuracy"]["sequential"]["significant"] is True
        assert metrics["satisfaction"]["significant"] is False
        page, errors, _ = await open_page(browser, running)
        accuracy = page.get_by_role("row").filter(has_text="accuracy")
        await accuracy.locator(".badge", has_text="significant").wait_for()
        assert await accuracy.locator(".badge").inner_text() == "significant"
        satisfaction = page.get_by_role("row").filter(has_text="satisfaction")
        assert await satisfaction.locator(".badge").inner_text() == "not significant"
        p_holm = metrics["accuracy"]["p_value_holm"]
        assert p_holm < 0.001  # a small p reads in scientific notation, as JavaScript writes it
        assert f"{p_holm:.1e}".replace("e-0", "e-") in await accuracy.inner_text()
        await page.close()  # before the server stops: a poll then would fail, as an error
    assert errors == []
