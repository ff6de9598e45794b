"""Fixtures shared by the email job tests: store and client with job settings, an SMTP server, and a worker
on the queues a test module names in ``WORKER_QUEUES``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.support import job_registry, job_settings
from tests.support.smtp import SmtpServer
from worker.runtime import Client, Worker
from worker.store import RedisStore


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def store(redis: Redis) -> RedisStore:
    return RedisStore(redis, job_settings().secret_key)


@pytest.fixture
def client(redis: Redis) -> Client:
    return Client(redis, job_settings())


@pytest.fixture
async def worker(request: pytest.FixtureRequest, redis_url: str, redis: Redis) -> AsyncIterator[Worker]:
    queues = request.module.WORKER_QUEUES
    async with Worker(redis_url, queues=queues, settings=job_settings(), registry=job_registry()) as w:
        yield w
