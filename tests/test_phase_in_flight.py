"""A request in flight while the percentage changes is counted in the phase its arm was
chosen in, under that arm (issue 26 item 10): never in the new phase under its old arm."""

from __future__ import annotations

import asyncio

from aiohttp import ClientSession

from abgate.control.serve import embedded
from tests.servers import PEERS, echo_app, make_config, serve_app, tables_reach, until


async def test_a_request_in_flight_during_a_change_counts_in_its_decisions_phase(
    session: ClientSession,
) -> None:
    slow = echo_app()
    async with serve_app(slow) as control_url, serve_app(echo_app()) as treatment_url:
        config = make_config({"control": control_url, "treatment": treatment_url}, percentage=0)
        async with embedded(config) as stack:
            before = stack.flags.get("exp")
            in_flight = asyncio.create_task(
                session.get(f"{stack.proxy_url}/slow/1", headers={"X-User-Id": "alice"})
            )
            await until(lambda: slow[PEERS])  # the control arm has it
            async with session.post(
                f"{stack.control_url}/api/flags/exp", json={"percentage": 100}
            ) as changed:
                assert changed.status == 200
            await tables_reach([stack.flags], "exp", before.version + 1)
            async with await in_flight as response:
                assert response.status == 200
                assert response.headers["X-ABGate-Arm"] == "control"
                assert response.headers["X-ABGate-Phase"] == str(before.phase)
            await stack.plane.flush_measurements()
            _, sums = await stack.worker.store.read("exp")
    phases = {
        (phase, arm): s.count for (_, phase, arm, metric, _), s in sums.items() if metric == "error"
    }
    assert phases == {(before.phase, "control"): 1}  # none in the new phase under control
