"""Benchmark runner for plain arq 0.28 (msgpack serializer); params["poll"] = poll_delay (0.5 = default)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from datetime import UTC, datetime
from importlib.metadata import version as pkg_version
from typing import Any

import msgpack
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker, func

from bench.common import CRASH_SLEEP_S, JOB_TIMEOUT_S, QUEUE, REC, Adapter, JobData, crash_started, main, noop, sleep

QUEUE_NAME = f"arq:{QUEUE}"


def _serialize(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


_deserialize = functools.partial(msgpack.unpackb, raw=False)


async def crash(ctx: dict[str, Any], **kw: Any) -> None:
    REC.start(kw)
    crash_started(ctx.get("job_try"))
    await asyncio.sleep(CRASH_SLEEP_S)
    REC.end()


async def idonly(ctx: dict[str, Any], tenant_id: str, message_id: str) -> None:
    REC.start({})
    REC.end()


class ArqAdapter(Adapter):
    name = "arq"

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        self.settings = RedisSettings.from_dsn(self.redis_url)
        self.pool: ArqRedis | None = None
        self.worker: Worker | None = None
        self.task: asyncio.Task[None] | None = None

    def version(self) -> str:
        return pkg_version("arq")

    async def open(self) -> None:
        self.pool = await create_pool(
            self.settings,
            job_serializer=_serialize,
            job_deserializer=_deserialize,
            default_queue_name=QUEUE_NAME,
        )

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()

    async def enqueue(self, kind: str, data: JobData, run_at: float | None = None) -> None:
        assert self.pool is not None
        defer = datetime.fromtimestamp(run_at, tz=UTC) if run_at is not None else None
        job = await self.pool.enqueue_job(kind, _defer_until=defer, **data)
        if job is None:
            raise RuntimeError("arq refused the job (duplicate id)")

    async def start_worker(self, concurrency: int) -> None:
        self.worker = Worker(
            functions=[func(f, name=f.__name__) for f in (noop, sleep, crash, idonly)],  # type: ignore[arg-type]
            queue_name=QUEUE_NAME,
            redis_settings=self.settings,
            max_jobs=concurrency,
            poll_delay=float(self.params.get("poll", 0.5)),
            job_timeout=JOB_TIMEOUT_S,
            handle_signals=False,
            job_serializer=_serialize,
            job_deserializer=_deserialize,
        )
        self.task = asyncio.create_task(self.worker.async_run())

    async def stop_worker(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        if self.worker is not None:
            with contextlib.suppress(Exception):
                await self.worker.close()

    async def used_memory(self) -> int:
        assert self.pool is not None
        info = await self.pool.info("memory")
        return int(info["used_memory"])


if __name__ == "__main__":
    main(ArqAdapter)
