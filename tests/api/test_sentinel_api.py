"""The API behind Redis Sentinel: ready through the sentinels, and still serving after the primary is killed."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from settings import Settings
from tests.api.conftest import ADMIN
from tests.helpers import eventually
from tests.support.sentinel import SentinelSet
from worker.api import create_app
from worker.api.server import serve
from worker.runtime.connection import parse_sentinel, redis_address


def test_sentinel_addresses_parse_and_come_from_settings() -> None:
    addr = parse_sentinel("redis+sentinel://u:p%40ss@127.0.0.1:26379,[::1]:26380/cache/2")
    assert addr.sentinels == (("127.0.0.1", 26379), ("::1", 26380))
    assert (addr.service, addr.db, addr.username, addr.password) == ("cache", 2, "u", "p@ss")
    for bad in ("redis://x:1/0", "redis+sentinel://h:1", "redis+sentinel://h/svc", "redis+sentinel://h:1/s/x"):
        with pytest.raises(ValueError):
            parse_sentinel(bad)
    s = Settings(redis_sentinels="10.0.0.1:26379, 10.0.0.2:26379", redis_sentinel_service="jobs")
    assert redis_address(s) == "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/jobs"
    assert redis_address(s, "redis://elsewhere:6379/0") == "redis://elsewhere:6379/0"


async def test_api_follows_a_sentinel_failover(settings: Settings) -> None:
    sset = await asyncio.to_thread(SentinelSet().start)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    try:
        async with serve(create_app(settings, redis_url=sset.url)) as url, httpx.AsyncClient(base_url=url) as c:
            assert (await c.get("/ready")).status_code == 200
            assert (await c.get("/v1/queues", headers=auth)).status_code == 200
            await asyncio.to_thread(sset.kill_primary)
            await asyncio.to_thread(sset.wait_promoted)

            async def serving() -> bool:
                r = await c.post("/v1/jobs", json={"function": "admin_task", "payload": {}}, headers=auth)
                return r.status_code == 202 and (await c.get("/ready")).status_code == 200

            await eventually(serving, within=20, every=0.2)
    finally:
        sset.stop()
