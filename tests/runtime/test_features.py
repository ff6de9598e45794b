"""Idempotency, priorities, progress and events, status, cancel/reschedule, plain arq producers."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from settings import Settings
from worker.runtime import Client, Events, UnknownFunction, Worker, create_pool


async def test_idempotent_enqueue_twice_runs_once(client: Client, redis: Redis, any_worker: object) -> None:
    a = await client.enqueue("side_effect_once", {"key": "i1"}, idempotency_key="order-1")
    b = await client.enqueue("side_effect_once", {"key": "i1"}, idempotency_key="order-1")
    assert not a.duplicate and b.duplicate and a.job_id == b.job_id
    st = await client.wait(a.job_id, timeout=10)
    assert st.state == "complete" and st.result == 1
    # after completion the same key still returns the same job, never a second run
    c = await client.enqueue("side_effect_once", {"key": "i1"}, idempotency_key="order-1")
    assert c.duplicate and c.job_id == a.job_id
    await asyncio.sleep(0.2)
    assert await redis.get("t:i1:effects") == b"1"


async def test_rerun_of_completed_idempotent_job_returns_stored_result(
    client: Client, redis: Redis, any_worker: object
) -> None:
    """A crash between the side effect and arq's bookkeeping re-runs the job: the stored result is reused."""
    r = await client.enqueue("side_effect_once", {"key": "i2"})  # key from the function's idempotency_key
    assert (await client.wait(r.job_id, timeout=10)).result == 1
    # a second job (e.g. a plain arq producer, or the same job after a crash) with the same computed key
    again = await client.enqueue("side_effect_once", {"key": "i2"})
    assert not again.duplicate  # no explicit key at enqueue: dedupe happens at execution
    st = await client.wait(again.job_id, timeout=10)
    assert st.state == "complete" and st.result == 1
    assert await redis.get("t:i2:effects") == b"1"


async def test_concurrent_duplicate_execution_is_prevented(client: Client, redis: Redis, any_worker: object) -> None:
    jobs = [await client.enqueue("side_effect_once", {"key": "i3", "sleep": 0.5}) for _ in range(3)]
    states = [await client.wait(j.job_id, timeout=15) for j in jobs]
    assert [s.state for s in states] == ["complete"] * 3
    assert {s.result for s in states} == {1}
    assert await redis.get("t:i3:effects") == b"1"


async def test_priorities_higher_first_fifo_within(redis_url: str, redis: Redis, settings: Settings) -> None:
    client = Client(redis, settings)
    plan = [("a0", 0), ("b5", 5), ("c0", 0), ("d9", 9), ("e5", 5), ("f9", 9), ("g0", 0)]
    ids = [(await client.enqueue("record_order", {"key": k}, priority=p)).job_id for k, p in plan]
    async with Worker(redis_url, queues=["rt-test"], concurrency=1, settings=settings):
        for i in ids:
            await client.wait(i, timeout=10)
    order = [x.decode() for x in await redis.lrange("t:order", 0, -1)]
    assert order == ["d9", "f9", "b5", "e5", "a0", "c0", "g0"]


async def test_deferred_priority_job_keeps_priority_when_due(redis_url: str, redis: Redis, settings: Settings) -> None:
    client = Client(redis, settings)
    deferred = await client.enqueue("record_order", {"key": "late9"}, priority=9, defer_by=0.3)
    st = await client.status(deferred.job_id)
    assert st.state == "deferred"
    await asyncio.sleep(0.4)
    ids = [(await client.enqueue("record_order", {"key": f"n{i}"})).job_id for i in range(3)]
    async with Worker(redis_url, queues=["rt-test"], concurrency=1, settings=settings):
        for i in [*ids, deferred.job_id]:
            await client.wait(i, timeout=10)
    order = [x.decode() for x in await redis.lrange("t:order", 0, -1)]
    assert order[0] == "late9"


async def test_event_stream_shows_full_lifecycle(client: Client, redis: Redis, worker: Worker) -> None:
    r = await client.enqueue("flaky", {"key": "ev", "fail_times": 1})
    await client.wait(r.job_id, timeout=10)
    r2 = await client.enqueue("with_progress", {"key": "ev2"})
    st = await client.wait(r2.job_id, timeout=10)
    assert st.progress == {"stage": "done", "items": 3}
    r3 = await client.enqueue("always_permanent", {"key": "ev3"})
    await client.wait(r3.job_id, timeout=10)
    events = await Events(redis).read("0", count=1000)
    by_job: dict[str, list[str]] = {}
    for _, e in events:
        by_job.setdefault(e["job_id"], []).append(e["type"])
    assert by_job[r.job_id] == ["enqueued", "started", "retrying", "started", "completed"]
    assert by_job[r2.job_id] == [
        "enqueued",
        "started",
        "progress",
        "progress",
        "progress",
        "progress",
        "completed",
    ]
    assert by_job[r3.job_id] == ["enqueued", "started", "dead"]
    # resumable: reading after an id returns only newer events
    mid = events[3][0]
    assert [e[0] for e in await Events(redis).read(mid, 1000)] == [e[0] for e in events[4:]]


async def test_event_stream_is_bounded(redis: Redis) -> None:
    client = Client(redis, Settings(events_maxlen=100))
    await client.enqueue_many("record_order", [{"key": str(i)} for i in range(2000)])
    assert await redis.xlen("rt:events") < 300


async def test_status_of_unknown_and_queued_jobs(client: Client) -> None:
    assert (await client.status("nope")).state == "not_found"
    r = await client.enqueue("record_order", {"key": "q"})
    st = await client.status(r.job_id)
    assert st.state == "queued" and st.function == "record_order" and st.queue == "rt-test"
    d = await client.enqueue("record_order", {"key": "q"}, defer_by=60)
    assert (await client.status(d.job_id)).state == "deferred"


async def test_bad_input_is_rejected_at_enqueue_and_nothing_is_written(client: Client, redis: Redis) -> None:
    with pytest.raises(ValidationError):
        await client.enqueue("flaky", {"key": 5, "fail_times": "many"})
    with pytest.raises(UnknownFunction):
        await client.enqueue("no_such_job", {})
    with pytest.raises(ValueError, match="priority"):
        await client.enqueue("flaky", {"key": "x"}, priority=12)
    with pytest.raises(ValueError, match="timezone"):
        await client.enqueue("flaky", {"key": "x"}, defer_until=dt.datetime(2030, 1, 1))
    assert await redis.dbsize() == 0


async def test_cancel_and_reschedule(client: Client, redis: Redis, any_worker: object) -> None:
    c = await client.enqueue("record_order", {"key": "cancelled"}, defer_by=0.5)
    assert await client.cancel(c.job_id)
    assert not await client.cancel(c.job_id)
    r = await client.enqueue("record_order", {"key": "moved"}, defer_by=30)
    t0 = asyncio.get_running_loop().time()
    assert await client.reschedule(r.job_id, defer_by=0.3)
    st = await client.wait(r.job_id, timeout=5)
    assert st.state == "complete"
    assert asyncio.get_running_loop().time() - t0 >= 0.25
    await asyncio.sleep(0.6)
    assert [x.decode() for x in await redis.lrange("t:order", 0, -1)] == ["moved"]
    assert (await client.status(c.job_id)).state == "cancelled"
    assert not await client.reschedule(r.job_id, defer_by=1)  # already done


async def test_plain_arq_enqueue_job_gets_default_policy(
    redis_url: str, client: Client, redis: Redis, any_worker: object
) -> None:
    pool = await create_pool(redis_url)
    try:
        job = await pool.enqueue_job("flaky", key="arq1", fail_times=1, _queue_name="rt-test")
        assert job is not None
        await redis.lpush("rt:wake:rt-test", 1)  # optional nudge; the worker also polls every idle_poll_ms
        st = await client.wait(job.job_id, timeout=10)
        assert st.state == "complete" and st.attempts == 2  # retried with the function's backoff policy
        assert await job.result(timeout=5) == {"attempt": 2}  # arq's own Job API reads our result
        assert await job.status() == "complete"
    finally:
        await pool.aclose()


async def test_pause_and_resume_queue(client: Client, redis: Redis, worker: Worker) -> None:
    await client.pause("rt-test")
    r = await client.enqueue("record_order", {"key": "p"})
    await asyncio.sleep(0.5)
    assert (await client.status(r.job_id)).state == "queued"
    await client.resume("rt-test")
    assert (await client.wait(r.job_id, timeout=5)).state == "complete"


async def test_resources_cached_in_state_are_closed_when_the_worker_stops(redis_url: str, settings: Settings) -> None:
    closed: list[str] = []

    class Resource:
        async def aclose(self) -> None:
            closed.append("resource")

    w = Worker(redis_url, queues=["rt-test"], settings=settings)
    await w.start()
    w.executor.state["conn"] = Resource()
    w.executor.state["plain"] = 42
    await w.stop()
    assert closed == ["resource"] and w.executor.state == {}


async def test_prefetch_keeps_the_concurrency_bound_and_returns_unstarted_jobs_on_stop(
    redis_url: str, redis: Redis
) -> None:
    settings = Settings(queues={"rt-other": {"rate_limit": None, "concurrency": 2, "prefetch": 4}})  # type: ignore[arg-type]
    client = Client(redis, settings)
    ids = [
        r.job_id
        for r in await client.enqueue_many("track_concurrency", [{"key": str(i), "sleep": 0.3} for i in range(10)])
    ]
    w = Worker(redis_url, queues=["rt-other"], settings=settings)
    await w.start()
    await asyncio.sleep(0.1)
    # two execute, four more are claimed ahead (leased, shown as active), four wait in Redis
    states = [(await client.status(i)).state for i in ids]
    assert states.count("active") == 6 and states.count("queued") == 4
    await w.stop(grace=5)  # running jobs finish; the prefetched ones go back unstarted
    assert int(await redis.get("t:max_executing") or 0) == 2
    done = await redis.llen("t:tracked")
    assert done == 2
    after = [await client.status(i) for i in ids]
    assert sum(s.state == "complete" for s in after) == 2
    back = [s for s in after if s.state == "queued"]
    assert len(back) == 8 and all(s.attempts == 0 for s in back)  # the returned ones used no attempt
    async with Worker(redis_url, queues=["rt-other"], settings=settings):
        for i in ids:
            assert (await client.wait(i, timeout=15)).state == "complete"
    assert int(await redis.get("t:max_executing") or 0) == 2


async def test_enqueue_many_is_all_or_nothing_and_fifo_across_chunks(
    redis_url: str, redis: Redis, settings: Settings
) -> None:
    client = Client(redis, settings)
    bad = [{"key": str(i)} for i in range(2500)] + [{"key": None}]
    with pytest.raises(ValidationError):
        await client.enqueue_many("record_order", bad, chunk=5000)
    assert await redis.zcard("rt-test") == 0  # nothing written
    ids = [r.job_id for r in await client.enqueue_many("record_order", bad[:2500], chunk=5000)]
    assert len(set(ids)) == 2500
    async with Worker(redis_url, queues=["rt-test"], concurrency=1, settings=settings):
        await client.wait(ids[-1], timeout=60)
    assert [x.decode() for x in await redis.lrange("t:order", 0, -1)] == [str(i) for i in range(2500)]


async def test_automatic_prefetch_engages_only_for_short_jobs(redis_url: str, redis: Redis) -> None:
    settings = Settings(queues={"rt-other": {"rate_limit": None, "concurrency": 3}})  # type: ignore[arg-type]
    client = Client(redis, settings)
    async with Worker(redis_url, queues=["rt-other"], settings=settings) as w:
        loop = w.loops[0]
        assert loop.capacity == 3  # nothing measured yet: no prefetch
        quick = await client.enqueue_many("track_concurrency", [{"key": f"q{i}"} for i in range(20)])
        for r in quick:
            await client.wait(r.job_id, timeout=10)
        assert loop.capacity == 9  # short jobs: twice as many again are claimed ahead
        slow = await client.enqueue_many("track_concurrency", [{"key": f"s{i}", "sleep": 0.2} for i in range(12)])
        for r in slow:
            await client.wait(r.job_id, timeout=20)
        assert loop.capacity == 3  # jobs now average over 50 ms: nothing is parked in this worker
    assert int(await redis.get("t:max_executing") or 0) <= 3
