from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession, ClientTimeout

from scripts.demo_agent import create_app
from tests.servers import serve_app


@pytest.fixture
async def session() -> AsyncIterator[ClientSession]:
    async with ClientSession(timeout=ClientTimeout(total=30), auto_decompress=False) as client:
        yield client


@pytest.fixture
async def agents() -> AsyncIterator[dict[str, str]]:
    """The bundled demo agents: `control` (deterministic) and `treatment` (ml)."""
    async with (
        serve_app(create_app("deterministic")) as control,
        serve_app(create_app("ml", seed=1)) as treatment,
    ):
        yield {"control": control, "treatment": treatment}
