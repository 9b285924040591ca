from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession, ClientTimeout

from tests.servers import demo_agents


@pytest.fixture
async def session() -> AsyncIterator[ClientSession]:
    async with ClientSession(timeout=ClientTimeout(total=30), auto_decompress=False) as client:
        yield client


@pytest.fixture
async def agents() -> AsyncIterator[dict[str, str]]:
    """The bundled demo agents: `control` (deterministic) and `treatment` (ml)."""
    async with demo_agents() as urls:
        yield urls
