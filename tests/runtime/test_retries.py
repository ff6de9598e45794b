"""Retries with growing backoff, permanent errors, timeouts, RetryLater and Defer."""

from __future__ import annotations

import itertools

from redis.asyncio import Redis

from worker.runtime import Client, DeadLetters


async def _starts(redis: Redis, key: str) -> list[float]:
    return [float(x) for x in await redis.lrange(f"t:{key}:starts", 0, -1)]


async def test_flaky_job_succeeds_on_attempt_3_with_growing_delays(
    client: Client, redis: Redis, any_worker: object
) -> None:
    r = await client.enqueue("flaky", {"key": "f1", "fail_times": 2})
    st = await client.wait(r.job_id, timeout=10)
    assert st.state == "complete"
    assert st.result == {"attempt": 3}
    assert st.attempts == 3
    starts = await _starts(redis, "f1")
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) == 2
    # backoff 0.2 s then 0.4 s (+-20% jitter): each wait respects its exponentially growing floor
    assert gaps[0] >= 0.2 * 0.8 - 0.01
    assert gaps[1] >= 0.4 * 0.8 - 0.01
    assert await DeadLetters(redis).count() == 0


async def test_flaky_job_exhausting_attempts_is_dead_lettered(client: Client, redis: Redis, any_worker: object) -> None:
    r = await client.enqueue("flaky", {"key": "f2", "fail_times": 10})
    st = await client.wait(r.job_id, timeout=10)
    assert st.state == "dead"
    assert len(await _starts(redis, "f2")) == 3
    entry = await DeadLetters(redis).get(r.job_id)
    assert entry is not None
    assert entry.attempts == 3
    assert "failed after 3 attempts" in entry.error and "ConnectionError" in entry.error
    assert "upstream unavailable" in entry.traceback
    assert entry.payload == {"key": "f2", "fail_times": 10, "sleep": 0.0}


async def test_permanent_error_goes_to_dlq_after_one_attempt(client: Client, redis: Redis, any_worker: object) -> None:
    r = await client.enqueue("always_permanent", {"key": "p1"})
    st = await client.wait(r.job_id, timeout=10)
    assert st.state == "dead"
    assert await redis.get("t:p1:runs") == b"1"
    entry = await DeadLetters(redis).get(r.job_id)
    assert entry is not None and entry.attempts == 1
    assert "550 mailbox does not exist" in entry.error


async def test_timeout_is_retried_then_dead_lettered(client: Client, redis: Redis, any_worker: object) -> None:
    r = await client.enqueue("too_slow", {"key": "s1"})
    st = await client.wait(r.job_id, timeout=10)
    assert st.state == "dead"
    assert await redis.get("t:s1:runs") == b"2"
    entry = await DeadLetters(redis).get(r.job_id)
    assert entry is not None and "timed out after 0.3s" in entry.error


async def test_retry_later_honours_requested_delay(client: Client, redis: Redis, any_worker: object) -> None:
    r = await client.enqueue("retry_later", {"key": "rl"})
    st = await client.wait(r.job_id, timeout=10)
    assert st.state == "complete" and st.result == 2
    a, b = await _starts(redis, "rl")
    assert b - a >= 0.45


async def test_defer_does_not_consume_attempts(client: Client, redis: Redis, any_worker: object) -> None:
    r = await client.enqueue("deferring", {"key": "d1"})
    st = await client.wait(r.job_id, timeout=10)
    assert st.state == "complete"
    assert st.result == 1  # the third run is still attempt 1 of max 1
    assert await redis.get("t:d1:runs") == b"3"


async def test_dead_letter_retry_reenqueues_and_runs(client: Client, redis: Redis, any_worker: object) -> None:
    r = await client.enqueue("flaky", {"key": "f3", "fail_times": 3})
    assert (await client.wait(r.job_id, timeout=10)).state == "dead"
    dlq = DeadLetters(redis, client)
    assert [e.job_id for e in await dlq.list()] == [r.job_id]
    again = await dlq.retry(r.job_id)
    assert again.job_id != r.job_id
    st = await client.wait(again.job_id, timeout=10)
    assert st.state == "complete"  # attempt counting starts afresh: 4th start overall succeeds
    assert await dlq.count() == 0
    assert len(await _starts(redis, "f3")) == 4


async def test_dead_letter_purge(client: Client, redis: Redis, any_worker: object) -> None:
    ids = [(await client.enqueue("always_permanent", {"key": f"pp{i}"})).job_id for i in range(3)]
    for i in ids:
        await client.wait(i, timeout=10)
    dlq = DeadLetters(redis, client)
    assert await dlq.count() == 3
    assert await dlq.purge([ids[0]]) == 1
    assert await dlq.count() == 2
    assert await dlq.purge() == 2
    assert await dlq.list() == []
