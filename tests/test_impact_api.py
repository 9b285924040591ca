"""Long-term stability of a flag that never changed, and a rehearsal's time scale."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import ClientSession

from abgate.control.serve import embedded
from tests.servers import make_config


async def test_a_flag_never_changed_has_its_days_at_100_percent(
    session: ClientSession, agents: dict[str, str]
) -> None:
    """It was a 500 (`zip() argument 2 is longer than argument 1`)."""
    async with embedded(make_config(agents, percentage=100)) as running:
        url = f"{running.control_url}/api/metrics/exp/long-term-stability"
        async with session.get(url) as response:
            body = await response.json()
            assert response.status == 200, body
        assert body["days_at_100_percent"] > 0
        assert body["incidents_count"] == 0


async def test_a_rehearsal_counts_its_time_scale_and_says_so(
    session: ClientSession, agents: dict[str, str]
) -> None:
    config = make_config(agents, percentage=100)
    scaled = replace(config, control=replace(config.control, report_time_scale=86400.0))
    for cfg, scale in ((config, 1.0), (scaled, 86400.0)):
        async with embedded(cfg) as running:
            url = f"{running.control_url}/api/metrics/exp/long-term-stability"
            async with session.get(url) as response:
                body = await response.json()
                assert response.status == 200, body
            assert body["time_scale"] == scale
            assert body["seconds_at_100_percent"] > 0
            assert body["days_at_100_percent"] == body["seconds_at_100_percent"] * scale / 86400
            assert body["incidents_count"] == 0
