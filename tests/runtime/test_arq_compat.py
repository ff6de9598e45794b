"""The same semantics on arq's own worker loop (worker_settings -> arq.worker.Worker)."""

from __future__ import annotations

import pickle
import time

from redis.asyncio import Redis

from settings import Settings
from tests.helpers import eventually
from tests.runtime.conftest import arq_worker
from worker.runtime import Client, DeadLetters, Events, create_pool


async def test_flaky_retries_and_permanent_failures_on_arq_loop(
    redis_url: str, redis: Redis, settings: Settings
) -> None:
    client = Client(redis, settings)
    async with arq_worker(redis_url, settings):
        flaky = await client.enqueue("flaky", {"key": "c1", "fail_times": 2})
        perm = await client.enqueue("always_permanent", {"key": "c2"})
        st = await client.wait(flaky.job_id, timeout=15)
        assert st.state == "complete" and st.result == {"attempt": 3} and st.attempts == 3
        st2 = await client.wait(perm.job_id, timeout=15)
        assert st2.state == "dead"
    starts = [float(x) for x in await redis.lrange("t:c1:starts", 0, -1)]
    assert starts[1] - starts[0] >= 0.2 * 0.8 - 0.01 and starts[2] - starts[1] >= 0.4 * 0.8 - 0.01
    entry = await DeadLetters(redis).get(perm.job_id)
    assert entry is not None and "550 mailbox does not exist" in entry.error and entry.attempts == 1
    types = [e["type"] for _, e in await Events(redis).read("0", 500) if e["job_id"] == flaky.job_id]
    assert types == ["enqueued", "retrying", "retrying", "completed"]


async def test_malformed_and_unknown_are_dead_lettered_on_arq_loop(
    redis_url: str, redis: Redis, settings: Settings
) -> None:
    now = int(time.time() * 1000)
    await redis.set("arq:job:pickled", pickle.dumps({"t": 1, "f": "flaky", "a": [], "k": {}, "et": now}))
    await redis.zadd("rt-test", {"pickled": now})
    pool = await create_pool(redis_url)
    try:
        unknown = await pool.enqueue_job("nope", _queue_name="rt-test")
        wrong = await pool.enqueue_job("flaky", key=1, _queue_name="rt-test")
    finally:
        await pool.aclose()
    assert unknown is not None and wrong is not None
    dlq = DeadLetters(redis)
    async with arq_worker(redis_url, settings):

        async def three_dead() -> bool:
            return await dlq.count() == 3

        await eventually(three_dead)
    errors = {e.job_id: e.error for e in await dlq.list()}
    assert "undeserializable payload" in errors["pickled"]
    assert "unknown function 'nope'" in errors[unknown.job_id]
    assert "invalid payload for flaky" in errors[wrong.job_id]


async def test_idempotency_on_arq_loop(redis_url: str, redis: Redis, settings: Settings) -> None:
    client = Client(redis, settings)
    a = await client.enqueue("side_effect_once", {"key": "c3"}, idempotency_key="order-9", priority=3)
    assert (await client.enqueue("side_effect_once", {"key": "c3"}, idempotency_key="order-9")).duplicate
    async with arq_worker(redis_url, settings):
        sa = await client.wait(a.job_id, timeout=10)
        # no explicit key: the function's computed key ("c3") applies, a different key, so it runs once more
        b = await client.enqueue("side_effect_once", {"key": "c3"})
        sb = await client.wait(b.job_id, timeout=10)
        # same computed key again: the stored result is returned, the side effect is not repeated
        c = await client.enqueue("side_effect_once", {"key": "c3"})
        sc = await client.wait(c.job_id, timeout=10)
    assert (sa.result, sb.result, sc.result) == (1, 2, 2)
    assert await redis.get("t:c3:effects") == b"2"
