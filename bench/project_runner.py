"""Benchmark runner for OUR worker, through the public API of worker.runtime (docs/runtime-contract.md).

Jobs are declared with `@job` and pydantic payload models (as real job code is), into a private registry;
the queue policy has no rate limit (the default queue policy limits to 10 jobs/s). Producing goes through
`Client.enqueue` / `Client.enqueue_many`; the worker is `Worker(redis_url, queues=[...], concurrency=N)`
used as an async context manager in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from bench.common import CRASH_SLEEP_S, JOB_TIMEOUT_S, QUEUE, REC, SLEEP_S, Adapter, JobData, crash_started, main


class Stamp(BaseModel):
    ts: float
    tag: str
    i: int = 0


class IdOnly(BaseModel):
    tenant_id: str
    message_id: str


def _settings() -> Any:
    from settings import Settings

    policy = {"concurrency": 100, "rate_limit": None, "max_attempts": 3, "timeout": float(JOB_TIMEOUT_S)}
    return Settings(queues={QUEUE: policy})


def _registry() -> tuple[Any, bool]:
    """Register the bench jobs; in a private Registry when the runtime supports one."""
    import worker.runtime as rt

    reg: Any = rt.Registry() if hasattr(rt, "Registry") else None
    private = reg is not None

    def register(fn: Any, name: str, payload: type[BaseModel]) -> None:
        opts: dict[str, Any] = {"queue": QUEUE, "payload": payload, "name": name, "timeout": float(JOB_TIMEOUT_S)}
        if private:
            try:
                rt.job(**opts, into=reg)(fn)
                return
            except TypeError:
                pass
        rt.job(**opts)(fn)

    async def noop(ctx: Any, payload: Stamp) -> None:
        REC.start({"ts": payload.ts, "tag": payload.tag})
        REC.end()

    async def sleep(ctx: Any, payload: Stamp) -> None:
        REC.start({"ts": payload.ts, "tag": payload.tag})
        await asyncio.sleep(SLEEP_S)
        REC.end()

    async def crash(ctx: Any, payload: Stamp) -> None:
        REC.start({"ts": payload.ts, "tag": payload.tag})
        crash_started(getattr(ctx, "attempt", None))
        await asyncio.sleep(CRASH_SLEEP_S)
        REC.end()

    async def idonly(ctx: Any, payload: IdOnly) -> None:
        REC.start({})
        REC.end()

    for fn, name, model in ((noop, "noop", Stamp), (sleep, "sleep", Stamp), (crash, "crash", Stamp)):
        register(fn, name, model)
    register(idonly, "idonly", IdOnly)
    if not private:
        reg = rt.registry
    return reg, private


class ProjectAdapter(Adapter):
    name = "project"

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        import worker.runtime as rt

        self.rt = rt
        self.settings = _settings()
        self.registry, self.private = _registry()
        self.has_batch = hasattr(rt.Client, "enqueue_many")
        self.redis: Redis | None = None
        self.client: Any = None
        self.pipe: Any = None
        self.worker: Any = None

    def version(self) -> str:
        root = Path(__file__).resolve().parent.parent
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            sha = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "worker"], cwd=root, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            return f"git {sha}{'+dirty' if dirty else ''}"
        return "unknown"

    async def open(self) -> None:
        self.redis = Redis.from_url(self.redis_url)
        self.pipe = self.rt.Pipe.for_client(self.redis)  # auto-pipelined enqueues, as the API app does
        self.client = self.rt.Client(self.redis, settings=self.settings, registry=self.registry, pipe=self.pipe)

    async def close(self) -> None:
        if self.pipe is not None:
            await self.pipe.aclose()
        if self.redis is not None:
            await self.redis.aclose()

    async def enqueue(self, kind: str, data: JobData, run_at: float | None = None) -> None:
        defer = datetime.fromtimestamp(run_at, tz=UTC) if run_at is not None else None
        await self.client.enqueue(kind, data, defer_until=defer)

    async def enqueue_batch(self, kind: str, datas: list[JobData]) -> None:
        await self.client.enqueue_many(kind, datas)

    async def start_worker(self, concurrency: int) -> None:
        try:
            self.worker = self.rt.Worker(
                self.redis_url,
                queues=[QUEUE],
                concurrency=concurrency,
                settings=self.settings,
                registry=self.registry,
            )
        except TypeError:
            self.worker = self.rt.Worker(self.redis_url, queues=[QUEUE], concurrency=concurrency)
        await self.worker.__aenter__()

    async def stop_worker(self) -> None:
        if self.worker is not None:
            await self.worker.__aexit__(None, None, None)

    async def used_memory(self) -> int:
        assert self.redis is not None
        info = await self.redis.info("memory")
        return int(info["used_memory"])


if __name__ == "__main__":
    main(ProjectAdapter)
