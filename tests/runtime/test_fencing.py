"""Fencing tokens: an attempt's outcome counts unless another attempt started since, even after its lease expired;
reclaimed and re-queued jobs go to the front of their priority band."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from settings import Settings
from tests.helpers import eventually
from tests.runtime.conftest import TEST_QUEUES
from tests.runtime.conftest import test_settings as make_settings
from worker.runtime import Client, Worker, keys, registry
from worker.runtime.executor import Executor, Outcome
from worker.runtime.serializer import unpack

Q = "rt-test"
QKEYS = keys.claim_keys(Q)


async def _claim(ex: Executor, owner: str, n: int = 1) -> list[tuple[str, int]]:
    """Claim as worker ``owner``: [(job id, fencing token)]."""
    res = await ex.scripts.claim(keys=QKEYS, args=[n, 1000, owner, 1000, 0, 10, Q])
    return [(res[i].decode(), int(res[i + 4])) for i in range(2, len(res), 5)]


async def _lapse(redis: Redis, ex: Executor, job_id: str) -> None:
    """The lease runs out (as in a Redis outage longer than the lease) and the reaper re-queues the job."""
    await redis.delete(keys.in_progress(job_id))
    score = await redis.zscore(keys.active(Q), job_id)
    assert score is not None
    await redis.zadd(keys.active(Q), {job_id: int(score) % 16}, xx=True)  # deadline long past, priority kept
    reaped = await ex.scripts.reap(keys=[keys.active(Q), keys.queue(Q), keys.EVENTS, keys.wake(Q)], args=[1000, Q])
    assert reaped == 1
    assert await redis.zscore(keys.queue(Q), job_id) is not None


def _done(job_id: str, function: str, result: Any, idem_key: str = "", token: str = "") -> Outcome:
    return Outcome("complete", function=function, queue=Q, result=result, idem_key=idem_key or None, idem_token=token)


async def _finish(ex: Executor, owner: str, job_id: str, out: Outcome, fence: int, priority: int = 0) -> int:
    flags, _ = await ex.finish(Q, [ex.finish_item(job_id, out, 1, priority, fence)], owner)
    return flags[0]


async def _renew(ex: Executor, owner: str, job_id: str, fence: int) -> list[bytes]:
    lost: list[bytes] = await ex.scripts.renew(
        keys=[keys.active(Q), keys.queue(Q)], args=[1000, owner, 0, Q, job_id, 0, "", "", fence]
    )
    return lost


async def test_outcome_after_a_lapsed_lease_is_recorded_when_no_other_attempt_started(
    redis: Redis, client: Client, settings: Settings
) -> None:
    ex = Executor(redis, settings, registry, "A")
    job = await client.enqueue("slow", {"key": "f1"})
    [(job_id, fence)] = await _claim(ex, "A")
    await _lapse(redis, ex, job.job_id)
    assert await _finish(ex, "A", job_id, _done(job_id, "slow", "late but fine"), fence) == 1
    st = await client.status(job_id)
    assert (st.state, st.result) == ("complete", "late but fine")
    assert await redis.zcard(keys.queue(Q)) == 0 and await redis.zcard(keys.active(Q)) == 0
    assert await _claim(ex, "B") == []  # nothing left to run again


async def test_stale_attempt_is_not_recorded_but_its_idempotency_record_is(
    redis: Redis, client: Client, settings: Settings
) -> None:
    ex_a, ex_b = Executor(redis, settings, registry, "A"), Executor(redis, settings, registry, "B")
    job = await client.enqueue("side_effect_once", {"key": "f2"})
    ik = keys.idempotency("side_effect_once", "f2")
    [(job_id, fence_a)] = await _claim(ex_a, "A")
    assert await ex_a.scripts.idem_begin(keys=[ik], args=[job_id, "tok-a", 1000, 60]) == [b"go"]
    await _lapse(redis, ex_a, job.job_id)
    await redis.delete(ik + ":lock")  # A's idempotency lock lapsed too
    [(_, fence_b)] = await _claim(ex_b, "B")  # another attempt starts
    assert fence_b > fence_a
    assert await _renew(ex_a, "A", job_id, fence_a) == [job_id.encode()]  # A's heartbeat: lost
    # A's run finished anyway (its side effect happened): the outcome is not recorded, the idempotency record is
    assert await _finish(ex_a, "A", job_id, _done(job_id, "side_effect_once", 7, ik, "tok-a"), fence_a) == 0
    assert (await client.status(job_id)).state == "active"
    verdict = await ex_b.scripts.idem_begin(keys=[ik], args=[job_id, "tok-b", 1000, 60])
    assert verdict[0] == b"done" and unpack(verdict[1]) == 7  # B reuses A's result instead of repeating it
    assert await _finish(ex_b, "B", job_id, _done(job_id, "side_effect_once", 7, ik, "tok-b"), fence_b) == 1
    assert (await client.status(job_id)).result == 7


async def test_heartbeat_takes_back_a_lapsed_lease_unless_another_attempt_started(
    redis: Redis, client: Client, settings: Settings
) -> None:
    ex = Executor(redis, settings, registry, "A")
    await client.enqueue("slow", {"key": "f3"})
    [(job_id, fence)] = await _claim(ex, "A")
    await _lapse(redis, ex, job_id)
    assert await _renew(ex, "A", job_id, fence) == []  # taken back: out of the queue, leased to A again
    assert await redis.zscore(keys.queue(Q), job_id) is None
    assert await redis.get(keys.in_progress(job_id)) == b"A"
    assert await _claim(ex, "B") == []
    await _lapse(redis, ex, job_id)
    [(_, fence_b)] = await _claim(ex, "B")
    assert await _renew(ex, "A", job_id, fence) == [job_id.encode()]
    assert await _renew(ex, "B", job_id, fence_b) == []
    # an outcome recorded moves the token on: a late heartbeat of that attempt cannot take the job back
    assert await _finish(ex, "B", job_id, _done(job_id, "slow", "ok"), fence_b) == 1
    assert await _renew(ex, "B", job_id, fence_b) == [job_id.encode()]
    assert await redis.zcard(keys.active(Q)) == 0


async def test_reclaimed_jobs_go_to_the_front_of_their_band_behind_a_backlog(redis_url: str, redis: Redis) -> None:
    queues = {**TEST_QUEUES, Q: {**TEST_QUEUES[Q], "concurrency": 1, "prefetch": 0}}
    settings = make_settings(queues=queues)
    client = Client(redis, settings)
    ex = Executor(redis, settings, registry, "dead-worker")
    low = await client.enqueue("record_order", {"key": "stalled-low"})
    high = await client.enqueue("record_order", {"key": "stalled-high"}, priority=3)
    claimed = dict(await _claim(ex, "dead-worker", n=2))  # a worker claims both, then dies
    assert set(claimed) == {low.job_id, high.job_id}
    for job_id in claimed:  # its leases run out
        await redis.delete(keys.in_progress(job_id))
        await redis.zadd(keys.active(Q), {job_id: 3 if job_id == high.job_id else 0}, xx=True)
    await client.enqueue_many("record_order", [{"key": f"low-{i}"} for i in range(150)])
    await client.enqueue_many("record_order", [{"key": f"high-{i}"} for i in range(150)], priority=3)
    await client.pause(Q)  # the worker reaps (after its start-up grace) before it runs anything
    async with Worker(redis_url, queues=[Q], settings=settings):

        async def reaped() -> bool:
            return int(await redis.zcard(keys.active(Q))) == 0

        await eventually(reaped)
        await client.resume(Q)

        async def all_ran() -> bool:
            return int(await redis.llen("t:order")) >= 302

        await eventually(all_ran, within=60)
    order = [x.decode() for x in await redis.lrange("t:order", 0, -1)]
    high_band = [k for k in order if "high" in k]
    low_band = [k for k in order if "low" in k]
    assert high_band[0] == "stalled-high", high_band[:5]
    assert low_band[0] == "stalled-low", low_band[:5]
    assert order.index("stalled-low") > order.index("high-149")  # still behind every higher-priority job


async def test_requeued_job_goes_to_the_front_of_its_band(redis: Redis, client: Client, settings: Settings) -> None:
    ex = Executor(redis, settings, registry, "A")
    first = await client.enqueue("record_order", {"key": "given-back"}, priority=2)
    [(job_id, fence)] = await _claim(ex, "A")
    assert job_id == first.job_id
    backlog = await client.enqueue_many("record_order", [{"key": f"b{i}"} for i in range(20)], priority=2)
    out = Outcome("requeue", function="record_order", queue=Q)
    assert await _finish(ex, "A", job_id, out, fence, priority=2) == 1  # e.g. a stopping worker gives it back unstarted
    head = await redis.zrange(keys.queue(Q), 0, 0)
    assert head == [job_id.encode()]
    st = await client.status(job_id)
    assert st.state == "queued" and st.run_at is not None
    assert abs(st.run_at.timestamp() - (await client.status(backlog[0].job_id)).run_at.timestamp()) < 60  # type: ignore[union-attr]
    assert (await _claim(ex, "B"))[0][0] == job_id
