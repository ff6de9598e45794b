"""Result TTLs and the maintenance job keep Redis bounded under sustained load."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from settings import Settings
from tests.helpers import eventually
from tests.runtime.conftest import TEST_QUEUES
from worker.runtime import Client, Registry, Worker, registry
from worker.runtime.context import JobContext
from worker.runtime.maintenance import maintenance


async def _count(redis: Redis, pattern: str) -> int:
    return len([k async for k in redis.scan_iter(match=pattern, count=1000)])


async def test_memory_stays_bounded_under_sustained_load(redis_url: str, redis: Redis) -> None:
    queues = {**TEST_QUEUES, "rt-test": {**TEST_QUEUES["rt-test"], "result_ttl": 1, "concurrency": 50}}
    settings = Settings(queues=queues, events_maxlen=500)  # type: ignore[arg-type]
    client = Client(redis, settings)
    async with Worker(redis_url, queues=["rt-test"], settings=settings):
        for _ in range(5):  # five waves of 400 jobs
            ids = [r.job_id for r in await client.enqueue_many("record_order", [{"key": "m"}] * 400)]
            await client.wait(ids[-1], timeout=20)
            await asyncio.gather(*(client.wait(i, timeout=20) for i in ids[:50]))
        await asyncio.sleep(1.3)  # past the 1 s result TTL
        assert await _count(redis, "arq:result:*") < 400
        assert await _count(redis, "rt:info:*") < 400
        assert await _count(redis, "arq:job:*") == 0
        assert await redis.zcard("rt-test") == 0 and await redis.zcard("rt:active:rt-test") == 0
        assert await redis.xlen("rt:events") < 1000
    await redis.delete("t:order")
    await asyncio.sleep(1.1)
    # everything the jobs left has expired: only bounded bookkeeping remains
    remaining = [k.decode() async for k in redis.scan_iter(count=1000)]
    assert all(k.startswith(("rt:events", "rt:stats:", "rt:rl:")) for k in remaining), remaining


async def test_maintenance_cleans_what_ttls_cannot(redis: Redis) -> None:
    settings = Settings(dead_letter_retention_s=60, events_maxlen=100)
    now_ms = int(time.time() * 1000)
    # an expired dead letter, a fresh one, an orphaned entry, keys without TTL, an overfull stream, arq aborts
    await redis.zadd("rt:dlq", {"old": now_ms - 120_000, "new": now_ms})
    await redis.set("rt:dlq:old", b"x")
    await redis.set("rt:dlq:new", b"x")
    await redis.set("rt:dlq:orphan", b"x")
    await redis.hset("rt:info:lost", mapping={"a": 1})
    await redis.hset("rt:idem:f:k", mapping={"s": "running"})
    for i in range(300):
        await redis.xadd("rt:events", {"type": "x", "i": i})
    await redis.zadd("arq:abort", {"stale": now_ms - 2 * 86400 * 1000, "recent": now_ms})
    ctx = JobContext(redis, Client(redis, settings), settings, "m1", "rt_maintenance", "q", 1, 1)
    report = await maintenance(ctx)
    assert report == {
        "dead_letters_expired": 1,
        "events_trimmed": 200,
        "aborts_removed": 1,
        "ttl_fixed": 2,
        "orphans_removed": 1,
        "group_entries_fixed": 0,
    }
    assert await redis.zrange("rt:dlq", 0, -1) == [b"new"]
    assert await redis.exists("rt:dlq:old", "rt:dlq:orphan") == 0
    assert await redis.ttl("rt:info:lost") > 0 and await redis.ttl("rt:idem:f:k") > 0
    assert await redis.xlen("rt:events") == 100


async def test_periodic_job_is_enqueued_once_per_period_across_workers(redis_url: str, redis: Redis) -> None:
    reg = Registry()
    for spec in registry.for_queue("rt-test"):
        reg.add(spec)
    reg.every("record_job_id", 1.0)
    settings = Settings(queues=TEST_QUEUES)  # type: ignore[arg-type]

    async def three_ticks() -> bool:
        return await redis.llen("t:job_ids") >= 3

    async with (
        Worker(redis_url, queues=["rt-test"], settings=settings, registry=reg),
        Worker(redis_url, queues=["rt-test"], settings=settings, registry=reg),
    ):
        await eventually(three_ticks, within=15)
    ids = [x.decode() for x in await redis.lrange("t:job_ids", 0, -1)]
    slots = [int(i.rsplit("-", 1)[1]) for i in ids]
    assert len(slots) == len(set(slots))  # two workers schedule, yet each 1-s period ran once
    assert all(i.startswith("cron-record_job_id-") for i in ids)
