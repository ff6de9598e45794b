"""Runtime test fixtures: test settings (fast leases, no queue rate limit), a client and an in-process worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from arq.connections import RedisSettings
from arq.worker import Worker as ArqWorker
from redis.asyncio import Redis

import tests.runtime.jobs  # noqa: F401  (registers the test jobs)
from settings import Settings
from tests.helpers import eventually
from worker.runtime import Client, Worker
from worker.runtime.arq_compat import worker_settings

TEST_QUEUES = {
    "rt-test": {"rate_limit": None, "concurrency": 10, "backoff_base": 0.1},
    "rt-other": {"rate_limit": None},
    "rt-groups": {"rate_limit": None, "concurrency": 1},
}


def test_settings(**overrides: object) -> Settings:
    base: dict[str, object] = {
        "queues": TEST_QUEUES,
        "lease_ms": 1000,
        "heartbeat_ms": 300,
        "idle_poll_ms": 200,
        "shutdown_grace_s": 2.0,
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


def env_for(redis_url: str, **overrides: object) -> dict[str, str]:
    """Environment for a subprocess worker with the same settings."""
    env = {
        "REDIS_URL": redis_url,
        "QUEUES": json.dumps(TEST_QUEUES),
        "LEASE_MS": "1000",
        "HEARTBEAT_MS": "300",
        "IDLE_POLL_MS": "200",
    }
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return env


@pytest.fixture
def settings() -> Settings:
    return test_settings()


@pytest.fixture
async def client(redis: Redis, settings: Settings) -> Client:
    return Client(redis, settings)


@pytest.fixture
async def worker(redis_url: str, redis: Redis, settings: Settings) -> AsyncIterator[Worker]:
    """Our worker loop on the test queue."""
    async with Worker(redis_url, queues=["rt-test"], settings=settings) as w:
        yield w


@pytest.fixture(params=["our-loop", "arq-loop"])
async def any_worker(
    request: pytest.FixtureRequest, redis_url: str, redis: Redis, settings: Settings
) -> AsyncIterator[object]:
    """The same job semantics on our loop and on arq's own loop (compat mode)."""
    if request.param == "our-loop":
        async with Worker(redis_url, queues=["rt-test"], settings=settings) as w:
            yield w
    else:
        async with arq_worker(redis_url, settings) as aw:
            yield aw


@asynccontextmanager
async def arq_worker(redis_url: str, settings: Settings) -> AsyncIterator[ArqWorker]:
    cls = worker_settings("rt-test", settings)
    kwargs = {k: v for k, v in vars(cls).items() if not k.startswith("__")}
    kwargs["redis_settings"] = RedisSettings.from_dsn(redis_url)
    w = ArqWorker(**kwargs, handle_signals=False)
    task = asyncio.create_task(w.main())
    try:
        yield w
    finally:

        async def idle() -> bool:  # let arq record the last results before close() cancels its tasks
            return not w.tasks

        await eventually(idle)
        await w.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
