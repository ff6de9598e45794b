"""Shared fixtures: one private redis-server per test process (xdist-safe), flushed before each test; one
throwaway PostgreSQL cluster per test process; a fresh store database per test (`database_url`)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from settings import get_settings
from tests.support import db
from tests.support.imap import DovecotServer, PymapServer
from worker.devstack import PostgresServer, RedisServer

# Tests never talk to a model API on the network, whatever the developer's shell exports.
os.environ.pop("ANTHROPIC_API_KEY", None)
os.environ.pop("DATABASE_URL", None)
os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="worker-test-data-")  # an embedded store never lands in the repo
# Workers and APIs started by tests (in-process or as subprocesses) may use the development SECRET_KEY; the
# refusal without this flag is tested with it removed (tests/test_entrypoints.py).
os.environ["ALLOW_DEV_SECRET"] = "1"
# The backend of the job, API and CLI tests (the store's contract tests run on both): postgresql | sqlite.
TEST_DATABASE = os.environ.get("TEST_DATABASE", "postgresql")


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for this test process (initdb + pg_ctl in a temp dir, as user postgres)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def pg_shared_url(postgres: PostgresServer) -> str:
    """A migrated database owned by the non-superuser application role."""
    return asyncio.run(db.create_database(postgres, "worker"))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return db.sqlite_template(tmp_path_factory.mktemp("sqlite-template"))


@pytest.fixture
async def pg_url(pg_shared_url: str) -> str:
    """The PostgreSQL store database, emptied."""
    await db.truncate(pg_shared_url)
    return pg_shared_url


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh migrated SQLite store database."""
    return db.sqlite_copy(sqlite_template, tmp_path)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty store database on TEST_DATABASE's backend, exported as DATABASE_URL (so Settings(),
    get_settings() and worker subprocesses use it)."""
    url: str = request.getfixturevalue("pg_url" if TEST_DATABASE == "postgresql" else "sqlite_url")
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


@pytest.fixture
def dovecot() -> Iterator[DovecotServer]:
    """A private Dovecot on a free port (`.ci/run` installs dovecot-imapd; without it this fails, never skips)."""
    with DovecotServer().start() as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def pymap() -> Iterator[PymapServer]:
    """A private pymap IMAP server (dict backend) on a free port."""
    with PymapServer().start() as server:
        yield server  # type: ignore[misc]
