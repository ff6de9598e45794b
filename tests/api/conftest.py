"""API fixtures: the real app served by uvicorn on a free port, a real Redis, an in-process worker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

import tests.api.jobs  # noqa: F401  (registers the test jobs)
from settings import Settings
from tests.support import FAST, QUEUES, SECRET_KEY
from worker.api import create_app
from worker.api.server import serve
from worker.runtime import Worker

ADMIN = "test-admin-token"


def api_settings(**overrides: object) -> Settings:
    """The job tests' fast settings (same secret key, no queue rate limits) plus the API test queue and token."""
    base: dict[str, object] = {
        "queues": {**QUEUES, "api-test": {"rate_limit": None, "backoff_base": 0.05}},
        "secret_key": SECRET_KEY,
        **FAST,
        "shutdown_grace_s": 1.0,
        "api_admin_token": ADMIN,
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _store_database(database_url: str) -> str:
    """Every test here gets an empty store database, exported as DATABASE_URL before any settings are built."""
    return database_url


@pytest.fixture
def settings() -> Settings:
    return api_settings()


@pytest.fixture
async def base_url(redis: Redis, redis_url: str, settings: Settings) -> AsyncIterator[str]:
    async with serve(create_app(settings, redis_url=redis_url)) as url:
        yield url


@pytest.fixture
async def admin(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        yield c


@pytest.fixture
async def anon(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url) as c:
        yield c


async def tenant_client(admin: httpx.AsyncClient, tenant: str) -> httpx.AsyncClient:
    """A client authenticated with a freshly issued token of ``tenant`` (close it after use)."""
    r = await admin.post(f"/v1/admin/tenants/{tenant}/tokens")
    assert r.status_code == 201, r.text
    return httpx.AsyncClient(base_url=str(admin.base_url), headers={"Authorization": f"Bearer {r.json()['token']}"})


@pytest.fixture
async def acme(admin: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    async with await tenant_client(admin, "acme") as c:
        yield c


@pytest.fixture
async def globex(admin: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    async with await tenant_client(admin, "globex") as c:
        yield c


@pytest.fixture
async def worker(redis_url: str, settings: Settings) -> AsyncIterator[Worker]:
    async with Worker(redis_url, queues=["api-test"], settings=settings) as w:
        yield w
