"""Shared fixtures: one private redis-server per test process (xdist-safe), flushed before each test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from worker.devstack import RedisServer

# Tests never talk to a model API on the network, whatever the developer's shell exports.
os.environ.pop("ANTHROPIC_API_KEY", None)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(redis_url)
    await client.flushall()
    yield client
    await client.aclose()
