"""The API starts while Redis is unreachable: /ready says 503 until Redis answers, then 200; routes work then."""

from __future__ import annotations

import asyncio

import httpx

from settings import Settings
from tests.api.conftest import ADMIN
from tests.helpers import eventually
from worker.api import create_app
from worker.api.server import serve
from worker.devstack import RedisServer


async def test_api_started_without_redis_is_not_ready_until_redis_answers(settings: Settings) -> None:
    server = RedisServer()  # nothing listens on its port yet
    try:
        async with serve(create_app(settings, redis_url=server.url)) as url, httpx.AsyncClient(base_url=url) as c:
            r = await c.get("/ready")
            assert r.status_code == 503 and r.json()["redis"] == "unreachable"
            assert (await c.get("/health")).status_code == 200
            await asyncio.to_thread(server.start)

            async def ready() -> bool:
                return (await c.get("/ready")).status_code == 200

            await eventually(ready, within=15)
            queues = await c.get("/v1/queues", headers={"Authorization": f"Bearer {ADMIN}"})
            assert queues.status_code == 200
    finally:
        server.stop()
