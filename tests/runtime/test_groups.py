"""Job groups (fair share between tenants) against a real Redis and real worker processes: round-robin claims,
a hot group cannot starve a cold one, per-group concurrency and rate limits across two processes, pausing one
group, crash recovery into the group, plain arq producers, and the bookkeeping going away with the jobs."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest
from arq.connections import RedisSettings
from arq.worker import Worker as ArqWorker
from redis.asyncio import Redis

from tests.helpers import eventually
from tests.runtime import conftest
from tests.runtime.conftest import TEST_QUEUES
from tests.runtime.jobs import QG
from tests.runtime.test_failures import worker_process
from worker.runtime import Client, Events, Worker, create_pool
from worker.runtime.arq_compat import worker_settings
from worker.runtime.context import JobContext
from worker.runtime.maintenance import maintenance

GROUP_KEYS = ("rt:g:*", "rt:gr:*", "rt:ga:*", "rt:gj:*")


async def _order(redis: Redis) -> list[str]:
    return [x.decode() for x in await redis.lrange("t:gorder", 0, -1)]


async def _group_keys(redis: Redis) -> list[str]:
    return sorted([k.decode() for pattern in GROUP_KEYS for k in await redis.keys(pattern)])


def _limits(**policy: object) -> dict[str, str]:
    """QUEUES for a subprocess worker: the test queues with ``policy`` on the grouped queue."""
    return {"QUEUES": json.dumps({**TEST_QUEUES, QG: {**TEST_QUEUES[QG], **policy}})}


async def test_claims_serve_groups_round_robin_and_release_their_keys(redis_url: str, redis: Redis) -> None:
    settings = conftest.test_settings()
    client = Client(redis, settings)
    await client.enqueue_many("tenant_work", [{"tenant": "A", "n": i} for i in range(6)])
    await client.enqueue_many("tenant_work", [{"tenant": "B", "n": i} for i in range(3)])
    await client.enqueue_many("tenant_work", [{"tenant": "C", "n": i} for i in range(3)])
    page = await client.groups(QG)
    assert page.groups == 3
    assert [(g.group, g.waiting, g.active) for g in page.items] == [("A", 6, 0), ("B", 3, 0), ("C", 3, 0)]
    async with Worker(redis_url, queues=[QG], settings=settings):
        await eventually(lambda: _len_is(redis, "t:gorder", 12))
    # inside a group FIFO; between groups one each in turn; A alone at the end
    assert await _order(redis) == [
        "A:0", "B:0", "C:0", "A:1", "B:1", "C:1", "A:2", "B:2", "C:2", "A:3", "A:4", "A:5",
    ]  # fmt: skip
    assert await _group_keys(redis) == []  # every group emptied: nothing of them is left in Redis
    assert (await client.groups(QG)).groups == 0


async def _len_is(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.llen(key)) >= n


async def test_priorities_hold_inside_a_group(redis_url: str, redis: Redis) -> None:
    settings = conftest.test_settings()
    client = Client(redis, settings)
    await client.enqueue_many("tenant_work", [{"tenant": "A", "n": i} for i in range(3)])
    await client.enqueue("tenant_work", {"tenant": "A", "n": 9}, priority=5)
    async with Worker(redis_url, queues=[QG], settings=settings):
        await eventually(lambda: _len_is(redis, "t:gorder", 4))
    assert await _order(redis) == ["A:9", "A:0", "A:1", "A:2"]


async def test_a_hot_group_cannot_starve_a_cold_one(redis_url: str, redis: Redis) -> None:
    settings = conftest.test_settings(queues={**TEST_QUEUES, QG: {"rate_limit": None, "concurrency": 5}})
    client = Client(redis, settings)
    await client.enqueue_many("tenant_work", [{"tenant": "hot", "n": i, "sleep": 0.005} for i in range(1000)])
    async with Worker(redis_url, queues=[QG], settings=settings):
        await eventually(lambda: _len_is(redis, "t:gorder", 50))
        cold = await client.enqueue_many("tenant_work", [{"tenant": "cold", "n": i} for i in range(5)])
        for r in cold:
            assert (await client.wait(r.job_id, timeout=20)).state == "complete"
        order = await _order(redis)
        hot_left = 1000 - sum(1 for x in order if x.startswith("hot:"))
    assert hot_left > 500, hot_left  # the cold tenant's jobs ran while most of the hot backlog still waited


async def test_group_concurrency_is_exact_across_two_worker_processes(redis_url: str, redis: Redis) -> None:
    client = Client(redis, conftest.test_settings())
    ids = [
        r.job_id
        for t in ("A", "B", "C")
        for r in await client.enqueue_many("tenant_work", [{"tenant": t, "n": i, "sleep": 0.3} for i in range(6)])
    ]
    limits = _limits(concurrency=10, group_concurrency=2)
    with worker_process(redis_url, "--queues", QG, **limits), worker_process(redis_url, "--queues", QG, **limits):
        for job_id in ids:
            st = await client.wait(job_id, timeout=60)
            assert st.state == "complete" and st.attempts == 1  # skipped while over the limit: no attempt used
    for t in ("A", "B", "C"):
        assert int(await redis.get(f"t:{t}:max_executing")) == 2, t  # never more than 2, and 2 were used
    kinds = {e["type"] for _, e in await Events(redis).read("0", 10_000)}
    assert "deferred" not in kinds and "requeued" not in kinds
    assert await _group_keys(redis) == []


async def test_group_rate_limit_holds_across_two_worker_processes(redis_url: str, redis: Redis) -> None:
    client = Client(redis, conftest.test_settings())
    ids = [
        r.job_id
        for t in ("A", "B")
        for r in await client.enqueue_many("tenant_work", [{"tenant": t, "n": i} for i in range(6)])
    ]
    limits = _limits(concurrency=10, group_rate_limit=5, group_rate_burst=1)
    with worker_process(redis_url, "--queues", QG, **limits), worker_process(redis_url, "--queues", QG, **limits):
        for job_id in ids:
            st = await client.wait(job_id, timeout=60)
            assert st.state == "complete" and st.attempts == 1
    starts = {t: sorted(float(x) for x in await redis.lrange(f"t:{t}:starts", 0, -1)) for t in ("A", "B")}
    for t, times in starts.items():
        assert len(times) == 6
        # 5 jobs/s per group, burst 1: the sixth is claimed no earlier than 1 s after the first (without the limit
        # all six start within a few ms); the jobs stamp their own start, which a loaded machine can delay by a few
        # hundred ms after the claim, hence the margin
        assert times[-1] - times[0] >= 0.6, (t, times)
        # no 1-second window holds more than burst + rate jobs of one group
        assert max(sum(1 for x in times if s <= x < s + 1.0) for s in times) <= 6
    # the limit is per group: B's jobs did not wait for A's
    assert starts["B"][0] < starts["A"][-1] and starts["A"][0] < starts["B"][-1]


async def test_a_paused_group_does_not_block_the_others(redis_url: str, redis: Redis, client: Client) -> None:
    settings = conftest.test_settings()
    client = Client(redis, settings)
    assert await client.pause_group(QG, "A") is True
    assert await client.pause_group(QG, "A") is False
    a = [r.job_id for r in await client.enqueue_many("tenant_work", [{"tenant": "A", "n": i} for i in range(3)])]
    b = [r.job_id for r in await client.enqueue_many("tenant_work", [{"tenant": "B", "n": i} for i in range(3)])]
    async with Worker(redis_url, queues=[QG], settings=settings):
        for job_id in b:
            assert (await client.wait(job_id, timeout=10)).state == "complete"
        await asyncio.sleep(0.3)
        assert [(await client.status(i)).state for i in a] == ["queued"] * 3
        assert (await client.group(QG, "A")).model_dump() == {
            "group": "A", "waiting": 3, "delayed": 0, "active": 0, "paused": True,
        }  # fmt: skip
        assert await client.resume_group(QG, "A") is True
        for job_id in a:
            assert (await client.wait(job_id, timeout=10)).state == "complete"
    assert await _order(redis) == ["B:0", "B:1", "B:2", "A:0", "A:1", "A:2"]


async def test_sigkilled_workers_grouped_jobs_are_reclaimed_into_their_group(redis_url: str, redis: Redis) -> None:
    policy = {"concurrency": 5, "group_concurrency": 1}
    settings = conftest.test_settings(queues={**TEST_QUEUES, QG: {**TEST_QUEUES[QG], **policy}})
    client = Client(redis, settings)
    first = await client.enqueue("tenant_work", {"tenant": "A", "n": 0, "sleep": 30})
    with worker_process(redis_url, "--queues", QG, **_limits(**policy)) as victim:
        await eventually(lambda: _len_is(redis, "t:gorder", 1), within=30)  # the process starts (slow under load)
        second = await client.enqueue("tenant_work", {"tenant": "A", "n": 1})
        other = await client.enqueue("tenant_work", {"tenant": "B", "n": 0})
        assert (await client.wait(other.job_id, timeout=10)).state == "complete"  # B is not held by A's limit
        await asyncio.sleep(0.3)
        assert (await client.status(second.job_id)).state == "queued"  # A is at its limit of 1
        assert (await client.group(QG, "A")).active == 1
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    await client.pause_group(QG, "A")  # so the reclaimed job stays where the reaper put it
    async with Worker(redis_url, queues=[QG], settings=settings):

        async def reclaimed() -> bool:
            return await redis.zscore(f"rt:g:{QG}:A", first.job_id) is not None

        await eventually(reclaimed, within=15)  # back in its group (not the queue zset), its slot released
        assert await redis.zscore(QG, first.job_id) is None
        counts = await client.group(QG, "A")
        assert (counts.waiting, counts.active) == (2, 0)
        await client.resume_group(QG, "A")
        for r in (first, second):
            assert (await client.wait(r.job_id, timeout=10)).state == "complete"
    assert (await client.status(first.job_id)).attempts == 2  # the crashed attempt counts
    assert await _order(redis) == ["A:0", "B:0", "A:0", "A:1"]  # reclaimed: the front of its group's band
    assert await _group_keys(redis) == []


async def test_plain_arq_enqueue_job_runs_in_the_default_group(redis_url: str, redis: Redis) -> None:
    settings = conftest.test_settings()
    client = Client(redis, settings)
    pool = await create_pool(redis_url)
    try:
        job = await pool.enqueue_job("tenant_work", tenant="X", n=1, _queue_name=QG)
        assert job is not None
        await client.enqueue("tenant_work", {"tenant": "A", "n": 0})
        page = await client.groups(QG)
        assert {(g.group, g.waiting) for g in page.items} == {("A", 1), ("~default", 1)}
        async with Worker(redis_url, queues=[QG], settings=settings):
            assert (await client.wait(job.job_id, timeout=10)).state == "complete"
        assert sorted(await _order(redis)) == ["A:0", "X:1"]
    finally:
        await pool.aclose()
    assert await _group_keys(redis) == []


async def test_arqs_own_loop_runs_grouped_jobs_round_robin(redis_url: str, redis: Redis) -> None:
    """`arq worker.WorkerSettings` (compat mode) sees only the queue zset: the groups feed it round robin."""
    settings = conftest.test_settings()
    client = Client(redis, settings)
    await client.enqueue_many("tenant_work", [{"tenant": "A", "n": i} for i in range(20)])
    b = await client.enqueue("tenant_work", {"tenant": "B", "n": 0})
    cls = worker_settings(QG, settings)
    kwargs = {k: v for k, v in vars(cls).items() if not k.startswith("__")}
    kwargs["redis_settings"] = RedisSettings.from_dsn(redis_url)
    w = ArqWorker(**kwargs, handle_signals=False)
    task = asyncio.create_task(w.main())
    try:
        assert (await client.wait(b.job_id, timeout=20)).state == "complete"
        await eventually(lambda: _len_is(redis, "t:gorder", 21), within=30)
    finally:

        async def idle() -> bool:  # let arq record the last results before close() cancels its tasks
            return not w.tasks

        await eventually(idle)
        await w.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert (await _order(redis)).index("B:0") < 10  # not behind A's backlog
    assert await _group_keys(redis) == []


async def test_deferred_and_retried_jobs_keep_their_group(redis_url: str, redis: Redis) -> None:
    settings = conftest.test_settings()
    client = Client(redis, settings)
    later = await client.enqueue("tenant_work", {"tenant": "A", "n": 1}, defer_by=60)
    st = await client.status(later.job_id)
    assert (st.state, st.group) == ("deferred", "A")
    assert (await client.group(QG, "A")).delayed == 1
    assert await client.reschedule(later.job_id, defer_by=0.2)
    deferring = await client.enqueue("tenant_work", {"tenant": "B", "n": 2, "defer_times": 2})
    prio_later = await client.enqueue("tenant_work", {"tenant": "C", "n": 3}, priority=3, defer_by=0.3)
    assert (await client.group(QG, "C")).delayed == 1  # a priority-deferred job is counted in its group
    async with Worker(redis_url, queues=[QG], settings=settings):
        for r in (later, deferring, prio_later):
            st = await client.wait(r.job_id, timeout=10)
            assert st.state == "complete" and st.attempts == 1
    assert await redis.get("t:B:2:defers") == b"3"
    assert await _group_keys(redis) == []


async def test_cancel_removes_a_grouped_job(redis: Redis, client: Client) -> None:
    r = await client.enqueue("tenant_work", {"tenant": "A"})
    assert await client.cancel(r.job_id)
    assert (await client.status(r.job_id)).state == "cancelled"
    assert (await client.group(QG, "A")).waiting == 0


@pytest.mark.parametrize("bad", ["~x", "x" * 201])
async def test_a_bad_group_key_is_refused_and_nothing_is_written(redis: Redis, client: Client, bad: str) -> None:
    with pytest.raises(ValueError, match="group key"):
        await client.enqueue("tenant_work", {"tenant": bad})
    assert await redis.dbsize() == 0


async def test_maintenance_repairs_group_bookkeeping(redis: Redis, client: Client) -> None:
    """Leftovers (stale leased-job entries, counts, ring entries of empty groups, a group missing from the ring)
    are cleaned by the maintenance job."""
    r = await client.enqueue("tenant_work", {"tenant": "A"})
    await redis.hset(f"rt:gj:{QG}", "ghost", "Z")
    await redis.hset(f"rt:ga:{QG}", mapping={"Z": 1, "A": 3})
    await redis.zadd(f"rt:gr:{QG}", {"gone": 1})
    await redis.zrem(f"rt:gr:{QG}", "A")
    ctx = JobContext(redis, client, client.settings, "m", "rt_maintenance", "q", 1, 1, {})
    out = await maintenance(ctx)
    assert out["group_entries_fixed"] == 5
    assert await redis.hgetall(f"rt:gj:{QG}") == {} and await redis.hgetall(f"rt:ga:{QG}") == {}
    assert [m.decode() for m in await redis.zrange(f"rt:gr:{QG}", 0, -1)] == ["A"]
    assert (await client.group(QG, "A")).waiting == 1
    assert (await client.status(r.job_id)).state == "queued"
