"""Runtime test fixtures: test settings (fast leases, no queue rate limit), a client and an in-process worker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

import tests.runtime.jobs  # noqa: F401  (registers the test jobs)
from settings import Settings
from worker.runtime import Client, Worker

TEST_QUEUES = {
    "rt-test": {"rate_limit": None, "concurrency": 10, "backoff_base": 0.1},
    "rt-other": {"rate_limit": None},
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
    async with Worker(redis_url, queues=["rt-test"], settings=settings) as w:
        yield w
