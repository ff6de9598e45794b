"""Jobs for API, CLI and dashboard tests, on the queue "api-test"."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from worker.runtime import JobContext, PermanentError, job

Q = "api-test"


class Task(BaseModel):
    tenant_id: str
    n: int = 0
    fail: bool = False
    sleep: float = 0.0


class Maintenance(BaseModel):
    note: str = ""


BROKEN = "t:broken"  # while this key exists, every tenant_task fails permanently ("a bug in production")


@job(queue=Q, payload=Task, max_attempts=2, backoff=0.05)
async def tenant_task(ctx: JobContext, p: Task) -> dict[str, int]:
    """Reports progress; fails permanently when asked or while BROKEN is set (so it is dead-lettered)."""
    await ctx.progress(50)
    await asyncio.sleep(p.sleep)
    if p.fail or await ctx.redis.exists(BROKEN):
        raise PermanentError(f"task {p.n} refused")
    return {"n": p.n * 2}


@job(queue=Q, payload=Maintenance)
async def admin_task(ctx: JobContext, p: Maintenance) -> str:
    return p.note
