"""The `api` fixture: a running one-node server with small limits, and a client of it."""

from __future__ import annotations

import aiohttp
import pytest

from tests.consul.helpers import (
    Api,
    start,
)


@pytest.fixture
async def api(tmp_path):
    server = await start(tmp_path)
    async with aiohttp.ClientSession() as http:
        yield Api(server, http)
    await server.stop(transfer=False)

