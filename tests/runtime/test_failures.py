"""Bad paths: malformed payloads, killed workers, graceful shutdown, rate limits across processes."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import msgpack
import pytest
from redis.asyncio import Redis

from settings import Settings
from tests.helpers import eventually
from tests.runtime.conftest import env_for
from worker.runtime import Client, DeadLetters, Events, Worker, create_pool


@contextmanager
def worker_process(redis_url: str, *extra: str, **env: object) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m worker run` with the test jobs, in its own process."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker",
            "run",
            "--import",
            "tests.runtime.jobs",
            "--queues",
            "rt-test",
            *extra,
        ],
        env={**os.environ, **env_for(redis_url, **env)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_malformed_payloads_are_dead_lettered_and_worker_survives(
    redis_url: str, redis: Redis, client: Client, worker: Worker
) -> None:
    dlq = DeadLetters(redis, client)
    now = int(time.time() * 1000)
    # 1. a pickle payload (what a vanilla arq client writes by default): never unpickled
    await redis.set("arq:job:pickled", pickle.dumps({"t": 1, "f": "flaky", "a": [], "k": {}, "et": now}))
    # 2. junk bytes
    await redis.set("arq:job:junk", b"\xc1\xff not msgpack")
    # 3. valid msgpack but not a job record
    await redis.set("arq:job:shape", msgpack.packb([1, 2, 3]))
    for jid in ("pickled", "junk", "shape"):
        await redis.zadd("rt-test", {jid: now})
    # 4. wrong types and 5. unknown function, from a plain arq producer
    pool = await create_pool(redis_url)
    try:
        wrong = await pool.enqueue_job("flaky", key=["not", "a", "string"], fail_times="x", _queue_name="rt-test")
        unknown = await pool.enqueue_job("does_not_exist", 1, _queue_name="rt-test")
    finally:
        await pool.aclose()
    assert wrong is not None and unknown is not None
    # 6. a queued id whose job record expired
    await redis.zadd("rt-test", {"vanished": now})
    await redis.lpush("rt:wake:rt-test", 1)

    expected = {
        "pickled": "undeserializable payload",
        "junk": "undeserializable payload",
        "shape": "malformed job record",
        wrong.job_id: "invalid payload for flaky",
        unknown.job_id: "unknown function 'does_not_exist'",
        "vanished": "job record missing",
    }

    async def all_dead() -> bool:
        return await dlq.count() == len(expected)

    await eventually(all_dead)
    for jid, fragment in expected.items():
        entry = await dlq.get(jid)
        assert entry is not None, jid
        assert fragment in entry.error, (jid, entry.error)
    wrong_entry = await dlq.get(wrong.job_id)
    assert wrong_entry is not None and "key: Input should be a valid string" in wrong_entry.error
    pickled = await dlq.get("pickled")
    assert pickled is not None and pickled.raw is not None and pickled.raw.startswith("80")
    # the worker is still healthy
    r = await client.enqueue("record_order", {"key": "after"})
    assert (await client.wait(r.job_id, timeout=5)).state == "complete"


async def test_worker_killed_mid_job_job_runs_again_quickly(redis_url: str, redis: Redis, client: Client) -> None:
    """SIGKILL a worker process mid-job: a second worker runs the job again within lease + reap interval."""
    r = await client.enqueue("slow", {"key": "k1", "sleep": 30})
    with worker_process(redis_url) as victim:

        async def started() -> bool:
            return await redis.llen("t:k1:starts") == 1

        await eventually(started, within=30)  # the process starts (slow under load)
        with worker_process(redis_url) as survivor:
            await asyncio.sleep(1.0)  # the survivor is up and idle (the job is leased by the victim)
            assert survivor.poll() is None
            victim.send_signal(signal.SIGKILL)
            killed_at = time.time()

            async def restarted() -> bool:
                return await redis.llen("t:k1:starts") == 2

            await eventually(restarted, within=20)
            second_start = float((await redis.lrange("t:k1:starts", 1, 1))[0])
            recovery = second_start - killed_at
            print(f"\ncrash recovery: job started again {recovery:.2f}s after SIGKILL (lease 1.0 s)")
            st = await client.status(r.job_id)
            assert st.state == "active" and st.attempts == 2
    events = [e["type"] for _, e in await Events(redis).read("0", 1000) if e["job_id"] == r.job_id]
    assert events == ["enqueued", "started", "stalled", "started"]


async def test_sigterm_lets_running_job_finish_and_requeues_the_rest(
    redis_url: str, redis: Redis, client: Client
) -> None:
    short = await client.enqueue("slow", {"key": "g1", "sleep": 0.8})
    with worker_process(redis_url, "--concurrency", "1", SHUTDOWN_GRACE_S=5) as proc:

        async def started() -> bool:
            return await redis.llen("t:g1:starts") == 1

        await eventually(started, within=30)  # the process starts (slow under load)
        queued = await client.enqueue("slow", {"key": "g2", "sleep": 0.1})
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    assert (await client.status(short.job_id)).state == "complete"  # finished within the grace period
    assert await redis.get("t:g2:done") is None  # not taken after SIGTERM
    assert (await client.status(queued.job_id)).state == "queued"


async def test_sigterm_past_grace_requeues_running_job_without_losing_it(
    redis_url: str, redis: Redis, client: Client
) -> None:
    long = await client.enqueue("slow", {"key": "g3", "sleep": 30})
    with worker_process(redis_url, SHUTDOWN_GRACE_S=0.5) as proc:

        async def started() -> bool:
            return await redis.llen("t:g3:starts") == 1

        await eventually(started, within=30)  # the process starts (slow under load)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    st = await client.status(long.job_id)
    assert st.state == "queued" and st.attempts == 0  # re-queued, the interrupted attempt not counted
    assert await redis.exists(f"arq:in-progress:{long.job_id}") == 0


async def test_queue_rate_limit_holds_across_two_worker_processes(redis_url: str, redis: Redis) -> None:
    client = Client(redis, Settings())
    ids = [r.job_id for r in await client.enqueue_many("slow", [{"key": f"r{i}"} for i in range(30)])]
    # 10 jobs/s with a burst of 5, shared by two processes
    limit = {"QUEUES": '{"rt-test": {"rate_limit": 10, "rate_burst": 5, "concurrency": 10}}'}
    with worker_process(redis_url, **limit), worker_process(redis_url, **limit):
        for i in ids:
            await client.wait(i, timeout=30)
    starts = sorted([float(x) for i in range(30) for x in await redis.lrange(f"t:r{i}:starts", 0, -1)])
    assert len(starts) == 30
    span = starts[-1] - starts[0]
    # 30 jobs, 5 allowed at once, then 10/s: the last can start no earlier than 2.5 s after the first
    assert span >= 2.3, span
    # no 1-second window holds more than burst + rate jobs
    assert max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts) <= 15


async def test_per_key_rate_limit_defers_without_consuming_attempts(
    client: Client, redis: Redis, worker: Worker
) -> None:
    ids = [(await client.enqueue("per_key_limited", {"key": f"tenantA-{i}"})).job_id for i in range(8)]
    other = (await client.enqueue("per_key_limited", {"key": "tenantB-0"})).job_id
    sts = [await client.wait(i, timeout=10) for i in [*ids, other]]
    assert all(s.state == "complete" and s.attempts == 1 for s in sts)
    a = sorted(float(x) for x in await redis.lrange("t:tenantA:starts", 0, -1))
    b = [float(x) for x in await redis.lrange("t:tenantB:starts", 0, -1)]
    assert len(a) == 8 and len(b) == 1
    assert a[-1] - a[0] >= 0.5  # 5/s with burst 5: jobs 6..8 wait
    assert b[0] < a[-1]  # another key is not held back behind tenant A's limit


async def test_queue_rate_limit_waits_are_counted(redis_url: str, redis: Redis) -> None:
    settings = Settings(queues={"rt-other": {"rate_limit": 5, "rate_burst": 1}}, idle_poll_ms=100)  # type: ignore[arg-type]
    client = Client(redis, settings)
    ids = [r.job_id for r in await client.enqueue_many("noop_other", [{"key": str(i)} for i in range(4)])]
    async with Worker(redis_url, queues=["rt-other"], settings=settings):
        for i in ids:
            assert (await client.wait(i, timeout=10)).state == "complete"
    # 4 jobs at 5/s with a burst of 1: claims were held back, and each hold-back was counted
    assert int(await redis.hget("rt:stats:rt-other", "rate_limited") or 0) >= 1
    assert int(await redis.hget("rt:stats:rt-other", "completed") or 0) == 4


async def test_worker_survives_its_redis_connections_being_dropped(
    redis_url: str, redis: Redis, settings: Settings, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Every worker connection (pipelined claims/finishes, pool, blocking wake-up) is killed, once while jobs
    run and once while the idle worker is blocked in Redis with a claim queued behind: it reconnects and every
    job completes once."""

    async def kill_worker_connections() -> None:
        killed = await redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert killed >= 2

    async def some_done() -> bool:
        return int(await redis.llen("t:tracked")) >= 3

    async with Worker(redis_url, queues=["rt-other"], concurrency=5, settings=settings) as w:
        busy = await client.enqueue_many("track_concurrency", [{"key": f"a{i}", "sleep": 0.2} for i in range(20)])
        await eventually(some_done)
        await kill_worker_connections()
        for r in busy:
            assert (await client.wait(r.job_id, timeout=30)).state == "complete"

        await eventually(lambda: _true(not w.loops[0]._claim_settled.is_set()))  # blocked, claim queued behind
        await kill_worker_connections()
        idle = await client.enqueue_many("track_concurrency", [{"key": f"b{i}", "sleep": 0} for i in range(5)])
        for r in idle:
            assert (await client.wait(r.job_id, timeout=30)).state == "complete"
    assert "claim on rt-other failed: ConnectionError: connection to Redis lost" in caplog.text  # blocked claim failed
    tracked = sorted(x.decode() for x in await redis.lrange("t:tracked", 0, -1))
    assert tracked == sorted([f"a{i}" for i in range(20)] + [f"b{i}" for i in range(5)])  # each exactly once


async def _true(value: bool) -> bool:
    return value


async def test_stopping_an_idle_worker_gives_back_what_its_blocked_claim_took(redis_url: str, redis: Redis) -> None:
    """An idle worker waits in Redis with a claim queued behind its BLPOP. A job that arrives without a wake-up
    (plain arq producer) is taken by that claim only when stop unblocks it: the drain must give it back
    unstarted, with no attempt counted, instead of leaving it leased to a stopped worker."""
    from tests.runtime.conftest import test_settings

    slow_poll = test_settings(idle_poll_ms=30_000)
    client = Client(redis, slow_poll)
    w = Worker(redis_url, queues=["rt-other"], settings=slow_poll)
    await w.start()

    async def blocked() -> bool:
        return not w.loops[0]._claim_settled.is_set()

    await eventually(blocked)
    pool = await create_pool(redis_url)
    job = await pool.enqueue_job("noop_other", key="late", _queue_name="rt-other")
    assert job is not None
    await pool.aclose()
    await asyncio.wait_for(w.stop(), 10)  # unblocked at once, not after the 30 s poll
    kinds = [f[b"type"] for _, f in await redis.xrange("rt:events") if f[b"job_id"] == job.job_id.encode()]
    assert kinds == [b"started", b"requeued"]  # the queued claim ran at stop and the drain gave the job back
    assert await redis.zscore("rt-other", job.job_id) is not None  # back in the queue
    assert await redis.zcard("rt:active:rt-other") == 0
    assert not await redis.exists(f"arq:in-progress:{job.job_id}")
    assert (await client.status(job.job_id)).attempts == 0
    async with Worker(redis_url, queues=["rt-other"], settings=test_settings()):
        st = await client.wait(job.job_id, timeout=10)
    assert st.state == "complete" and st.attempts == 1 and st.result == "late"


async def test_idle_worker_recovers_when_redis_forgets_its_scripts(
    redis_url: str, redis: Redis, settings: Settings, client: Client
) -> None:
    """SCRIPT FLUSH (as after a Redis restart) while the idle worker's claim waits behind its BLPOP: that claim
    fails with NOSCRIPT, and the worker reloads the script and runs the job instead of failing forever."""
    async with Worker(redis_url, queues=["rt-other"], settings=settings) as w:

        async def blocked() -> bool:
            return not w.loops[0]._claim_settled.is_set()

        await eventually(blocked)
        await redis.script_flush()
        r = await client.enqueue("noop_other", {"key": "after-flush"})
        st = await client.wait(r.job_id, timeout=15)
    assert st.state == "complete" and st.result == "after-flush"
