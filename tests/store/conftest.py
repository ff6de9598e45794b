"""The store's contract tests run on both backends: a migrated SQLite file and a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from settings import Settings
from worker.store import SqlStore

KEY = SecretStr("test-key")


def store_settings(url: str, key: SecretStr = KEY) -> Settings:
    return Settings(database_url=url, secret_key=key)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url


@pytest.fixture
async def store(backend_url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore.from_settings(store_settings(backend_url))
    yield s
    await s.aclose()
