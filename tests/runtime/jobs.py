"""Realistic job functions for runtime tests, on test queues. Each records what it did in Redis so tests
(and subprocess workers) can observe side effects."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel

from worker.runtime import Defer, JobContext, PermanentError, RetryLater, job

Q = "rt-test"
Q2 = "rt-other"


class Work(BaseModel):
    key: str
    fail_times: int = 0
    sleep: float = 0.0


@job(queue=Q, payload=Work, backoff=0.2, max_attempts=3)
async def flaky(ctx: JobContext, p: Work) -> dict[str, object]:
    """Fails (transiently) on its first ``fail_times`` runs (counted across jobs with the same key)."""
    runs = await ctx.redis.rpush(f"t:{p.key}:starts", f"{time.time():.6f}")
    if runs <= p.fail_times:
        raise ConnectionError(f"upstream unavailable (attempt {ctx.attempt})")
    return {"attempt": ctx.attempt}


@job(queue=Q, payload=Work)
async def always_permanent(ctx: JobContext, p: Work) -> None:
    await ctx.redis.incr(f"t:{p.key}:runs")
    raise PermanentError("550 mailbox does not exist")


@job(queue=Q, payload=Work, timeout=0.3, max_attempts=2, backoff=0.05)
async def too_slow(ctx: JobContext, p: Work) -> None:
    await ctx.redis.incr(f"t:{p.key}:runs")
    await asyncio.sleep(5)


@job(queue=Q, payload=Work, max_attempts=5, timeout=60)
async def slow(ctx: JobContext, p: Work) -> str:
    """Marks its start, sleeps, then records completion."""
    await ctx.redis.rpush(f"t:{p.key}:starts", f"{time.time():.6f}")
    await asyncio.sleep(p.sleep)
    await ctx.redis.incr(f"t:{p.key}:done")
    return "slept"


@job(queue=Q, payload=Work, idempotency_key=lambda p: p.key, max_attempts=5, timeout=60)
async def side_effect_once(ctx: JobContext, p: Work) -> int:
    """The side effect (INCR) must happen exactly once per key."""
    await asyncio.sleep(p.sleep)
    n = await ctx.redis.incr(f"t:{p.key}:effects")
    return int(n)


@job(queue=Q, payload=Work)
async def with_progress(ctx: JobContext, p: Work) -> str:
    for pct in (25, 50, 75):
        await ctx.progress(pct)
    await ctx.progress({"stage": "done", "items": 3})
    return "ok"


@job(queue=Q, payload=Work)
async def record_order(ctx: JobContext, p: Work) -> None:
    await ctx.redis.rpush("t:order", p.key)


@job(queue=Q)
async def record_job_id(ctx: JobContext, payload: object) -> None:
    await ctx.redis.rpush("t:job_ids", ctx.job_id)


@job(queue=Q, payload=Work, rate_limit=(5, 1.0), rate_limit_key=lambda p: p.key.split("-")[0])
async def per_key_limited(ctx: JobContext, p: Work) -> None:
    await ctx.redis.rpush(f"t:{p.key.split('-')[0]}:starts", f"{time.time():.6f}")


@job(queue=Q, payload=Work, max_attempts=2)
async def retry_later(ctx: JobContext, p: Work) -> int:
    await ctx.redis.rpush(f"t:{p.key}:starts", f"{time.time():.6f}")
    if ctx.attempt == 1:
        raise RetryLater("429 slow down", delay=0.5)
    return ctx.attempt


@job(queue=Q, payload=Work, max_attempts=1)
async def deferring(ctx: JobContext, p: Work) -> int:
    """Defers twice without consuming its single attempt."""
    n = await ctx.redis.incr(f"t:{p.key}:runs")
    if n < 3:
        raise Defer("budget exhausted", delay=0.1)
    return ctx.attempt


@job(queue=Q2, payload=Work)
async def noop_other(ctx: JobContext, p: Work) -> str:
    return p.key


@job(queue=Q2, payload=Work, timeout=60)
async def track_concurrency(ctx: JobContext, p: Work) -> None:
    """Records the highest number of simultaneous executions."""
    now = await ctx.redis.incr("t:executing")
    await ctx.redis.eval(
        "if tonumber(redis.call('GET', KEYS[1]) or 0) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end",
        1,
        "t:max_executing",
        now,
    )
    await asyncio.sleep(p.sleep)
    await ctx.redis.decr("t:executing")
    await ctx.redis.rpush("t:tracked", p.key)


@job(queue=Q, payload=Work, max_attempts=5, timeout=60)
async def outlives_redis(ctx: JobContext, p: Work) -> str:
    """Marks its start, then sleeps without touching Redis (it can finish while Redis is down)."""
    await ctx.redis.rpush(f"t:{p.key}:starts", f"{time.time():.6f}")
    await asyncio.sleep(p.sleep)
    return f"done {p.key}"


@job(queue=Q, payload=Work, idempotency_key=lambda p: p.key, max_attempts=5, timeout=60)
async def outlives_redis_once(ctx: JobContext, p: Work) -> str:
    """Idempotent twin of ``outlives_redis``."""
    await ctx.redis.rpush(f"t:{p.key}:starts", f"{time.time():.6f}")
    await asyncio.sleep(p.sleep)
    return f"done {p.key}"


QG = "rt-groups"


class TenantWork(BaseModel):
    tenant: str
    n: int = 0
    sleep: float = 0.0
    defer_times: int = 0


@job(queue=QG, payload=TenantWork, group=lambda p: p.tenant, max_attempts=3, timeout=60)
async def tenant_work(ctx: JobContext, p: TenantWork) -> int:
    """Records its start and the most simultaneous executions of its tenant, sleeps ``sleep`` s on its first
    attempt; defers its first ``defer_times`` runs."""
    if p.defer_times and await ctx.redis.incr(f"t:{p.tenant}:{p.n}:defers") <= p.defer_times:
        raise Defer("not yet", delay=0.2)
    await ctx.redis.rpush("t:gorder", f"{p.tenant}:{p.n}")
    await ctx.redis.rpush(f"t:{p.tenant}:starts", f"{time.time():.6f}")
    now = await ctx.redis.incr(f"t:{p.tenant}:executing")
    await ctx.redis.eval(
        "if tonumber(redis.call('GET', KEYS[1]) or 0) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end",
        1,
        f"t:{p.tenant}:max_executing",
        now,
    )
    if ctx.attempt == 1:
        await asyncio.sleep(p.sleep)
    await ctx.redis.decr(f"t:{p.tenant}:executing")
    return ctx.attempt
