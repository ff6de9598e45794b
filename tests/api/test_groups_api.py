"""Job groups through the surfaces: API counts and pause/resume per group, Prometheus, CLI."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from redis.asyncio import Redis

import tests.runtime.jobs  # noqa: F401  (registers the grouped test job)
from settings import Settings
from tests.api.conftest import api_settings
from tests.runtime.jobs import QG
from tests.test_cli import run
from worker.runtime import Client


@pytest.fixture
def settings() -> Settings:
    s = api_settings()
    s.queues[QG] = s.queue("rt-test").model_copy(update={"rate_limit": None})
    return s


async def _fill(redis: Redis, settings: Settings) -> Client:
    client = Client(redis, settings)
    await client.enqueue_many("tenant_work", [{"tenant": "acme", "n": i} for i in range(3)])
    await client.enqueue("tenant_work", {"tenant": "globex"})
    await client.enqueue("tenant_work", {"tenant": "globex"}, defer_by=300)
    return client


async def test_group_counts_and_pause_through_the_api(
    admin: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    await _fill(redis, settings)
    q = next(q for q in (await admin.get("/v1/queues")).json()["queues"] if q["name"] == QG)
    assert (q["waiting"], q["delayed"], q["groups"]) == (4, 1, 2)  # jobs in their groups count for the queue
    page = (await admin.get(f"/v1/queues/{QG}/groups")).json()
    assert page == {
        "queue": QG,
        "groups": 2,
        "items": [
            {"group": "acme", "waiting": 3, "delayed": 0, "active": 0, "paused": False},
            {"group": "globex", "waiting": 1, "delayed": 1, "active": 0, "paused": False},
        ],
    }
    waiting = (await admin.get(f"/v1/queues/{QG}/jobs", params={"state": "waiting"})).json()
    assert len(waiting) == 4
    r = await admin.post(f"/v1/queues/{QG}/groups/acme/pause")
    assert r.json() == {"queue": QG, "group": "acme", "paused": True}
    assert (await admin.get(f"/v1/queues/{QG}/groups/acme")).json()["paused"] is True
    assert (await admin.post(f"/v1/queues/{QG}/groups/acme/resume")).json()["paused"] is False
    assert (await admin.get(f"/v1/queues/{QG}/groups/~default")).json()["waiting"] == 0
    assert (await admin.post(f"/v1/queues/{QG}/groups/~bad/pause")).status_code == 422
    assert (await admin.get("/v1/queues/nope/groups")).status_code == 404
    metrics = (await admin.get("/metrics")).text
    assert f'worker_queue_groups{{queue="{QG}"}} 2.0' in metrics
    assert "acme" not in metrics  # group keys never become label values


async def test_group_routes_need_the_admin_token(base_url: str, anon: httpx.AsyncClient) -> None:
    assert (await anon.get(f"/v1/queues/{QG}/groups")).status_code == 401
    assert (await anon.post(f"/v1/queues/{QG}/groups/acme/pause")).status_code == 401


def test_cli_lists_and_pauses_groups(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    async def fill() -> None:
        redis = Redis.from_url(redis_url)
        await redis.flushall()
        await _fill(redis, api_settings())
        await redis.aclose()

    asyncio.run(fill())
    args = ("--redis-url", redis_url, "--import", "tests.runtime.jobs")
    code, out, _ = run(capsys, "groups", QG, "--json", *args)
    assert code == 0 and '"group": "acme"' in out and '"waiting": 3' in out
    code, out, _ = run(capsys, "pause", QG, "--group", "acme", *args)
    assert (code, out.strip()) == (0, f"{QG}: group acme paused")
    code, out, _ = run(capsys, "groups", QG, *args)
    assert code == 0 and "acme (paused)" in out and "globex" in out
    code, _, err = run(capsys, "resume", QG, "--group", "~x", *args)
    assert code == 2 and "group key" in err
