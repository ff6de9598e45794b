"""Benchmark runner for SAQ (Redis queue, default timers: schedule 1 s, sweep 60 s)."""

from __future__ import annotations

import asyncio
import contextlib
from importlib.metadata import version as pkg_version
from typing import Any

from saq import Queue, Worker

from bench.common import CRASH_SLEEP_S, JOB_TIMEOUT_S, QUEUE, REC, Adapter, JobData, crash_started, main, noop, sleep


async def crash(ctx: dict[str, Any], **kw: Any) -> None:
    REC.start(kw)
    job = ctx.get("job")
    crash_started(getattr(job, "attempts", None))
    await asyncio.sleep(CRASH_SLEEP_S)
    REC.end()


async def idonly(ctx: dict[str, Any], **kw: Any) -> None:
    REC.start({})
    REC.end()


class SaqAdapter(Adapter):
    name = "saq"

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        self.queue: Any = None
        self.worker: Worker[Any] | None = None
        self.task: asyncio.Task[None] | None = None

    def version(self) -> str:
        return pkg_version("saq")

    async def open(self) -> None:
        self.queue = Queue.from_url(self.redis_url, name=QUEUE)
        await self.queue.connect()

    async def close(self) -> None:
        if self.queue is not None:
            await self.queue.disconnect()

    async def enqueue(self, kind: str, data: JobData, run_at: float | None = None) -> None:
        # retries=2 so that a job swept after a crash runs again (default 1 = aborted when swept)
        job = await self.queue.enqueue(kind, timeout=JOB_TIMEOUT_S, retries=2, scheduled=run_at or 0, **data)
        if job is None:
            raise RuntimeError("saq refused the job (duplicate key)")

    async def start_worker(self, concurrency: int) -> None:
        self.worker = Worker(self.queue, functions=[noop, sleep, crash, idonly], concurrency=concurrency)
        self.task = asyncio.create_task(self.worker.start())

    async def stop_worker(self) -> None:
        if self.worker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.worker.stop(), 3)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task

    async def used_memory(self) -> int:
        info = await self.queue.redis.info("memory")
        return int(info["used_memory"])


if __name__ == "__main__":
    main(SaqAdapter)
