"""Fixtures shared by the email job tests: store and client with job settings, an SMTP server, and a worker
on the queues a test module names in ``WORKER_QUEUES``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.support import job_registry, job_settings
from tests.support.smtp import SmtpServer
from worker.runtime import Client, Worker
from worker.store import SqlStore, open_store


@pytest.fixture(autouse=True)
def _store_database(database_url: str) -> str:
    """Every test here gets an empty store database, exported as DATABASE_URL before any settings are built."""
    return database_url


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    """The store the workers use (same DATABASE_URL and secret key)."""
    s = open_store(job_settings())
    yield s
    await s.aclose()


@pytest.fixture
def client(redis: Redis) -> Client:
    return Client(redis, job_settings())


@pytest.fixture
async def worker(
    request: pytest.FixtureRequest, redis_url: str, redis: Redis, database_url: str
) -> AsyncIterator[Worker]:
    queues = request.module.WORKER_QUEUES
    async with Worker(redis_url, queues=queues, settings=job_settings(), registry=job_registry()) as w:
        yield w
