"""Fixtures of the watch tests: real Dovecot / pymap behind a counting TCP relay, workers for the sync and
analysis queues, and watch services (in-process, or `python -m worker watch` subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from settings import Settings
from tests.support import FAST, QUEUES, ROOT, SECRET_KEY, job_registry, job_settings
from tests.support.imap import DovecotServer
from tests.support.tcprelay import TcpRelay
from worker.runtime import Worker
from worker.store import SqlStore, open_store
from worker.watch.service import WatchService
from worker.watch.view import WatchOut, list_watches

# Fast watch settings: short leases and scans, a short debounce, quick backoff, a generous connect rate.
WATCH: dict[str, Any] = {
    "watch_lease_ms": 1500,
    "watch_scan_s": 0.2,
    "watch_reconcile_s": 2.0,
    "watch_debounce_s": 0.2,
    "watch_backoff_base_s": 0.2,
    "watch_backoff_cap_s": 1.0,
    "watch_connect_rate": 50.0,
    "watch_connect_burst": 50,
}


def watch_settings(**over: Any) -> Settings:
    return job_settings().model_copy(update=WATCH | over)


@pytest.fixture(autouse=True)
def _store_database(database_url: str) -> str:
    return database_url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    s = open_store(job_settings())
    yield s
    await s.aclose()


@pytest.fixture
def relay(dovecot: DovecotServer) -> Iterator[TcpRelay]:
    with TcpRelay(dovecot.port) as r:
        yield r


@pytest.fixture
async def worker(redis_url: str, redis: Redis, database_url: str) -> AsyncIterator[Worker]:
    """Workers of email-sync and ai-analysis, without the periodic schedule (no sync but the watchers')."""
    async with Worker(
        redis_url, queues=["email-sync", "ai-analysis"], settings=job_settings(), registry=job_registry()
    ) as w:
        yield w


class Services:
    """Watch services started by a test, stopped at its end."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.running: list[WatchService] = []

    async def start(self, **over: Any) -> WatchService:
        service = WatchService(self.redis_url, watch_settings(**over))
        await service.start()
        self.running.append(service)
        return service

    async def stop_all(self) -> None:
        for s in self.running:
            await s.stop()
        self.running.clear()


@pytest.fixture
async def services(redis_url: str, redis: Redis) -> AsyncIterator[Services]:
    s = Services(redis_url)
    yield s
    await s.stop_all()


def spawn_watch(redis_url: str, **over: Any) -> subprocess.Popen[bytes]:
    """`python -m worker watch` in its own process group, with the fast watch settings."""
    env = os.environ | {
        "REDIS_URL": redis_url,
        "QUEUES": json.dumps(QUEUES),
        "SECRET_KEY": SECRET_KEY,
        **{k.upper(): str(v) for k, v in (FAST | WATCH | over).items()},
    }
    return subprocess.Popen([sys.executable, "-m", "worker", "watch"], cwd=ROOT, env=env, start_new_session=True)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


async def watches(redis: Redis, tenant: str | None = None) -> list[WatchOut]:
    return await list_watches(redis, tenant)


async def connected(redis: Redis, n: int, tenant: str | None = None) -> bool:
    ws = await watches(redis, tenant)
    return sum(w.state == "connected" for w in ws) == n
