"""A PostgreSQL outage end to end: a real worker process syncs a Dovecot mailbox and analyses the new mail
against its own throwaway cluster; the cluster is stopped as if it crashed (`pg_ctl stop -m immediate`) in
the middle of the sync and while analyses run, then started again. Every job completes, none is
dead-lettered or charged an attempt for the outage, and no row is stored twice."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from redis.asyncio import Redis

from settings import get_settings
from tests.helpers import eventually
from tests.support import db, job_registry, job_settings, mail_account, spawn_worker
from tests.support.imap import DovecotServer, make_mail
from worker.devstack import PostgresServer
from worker.runtime import Client, DeadLetters, Events
from worker.store import SqlStore, open_store

WORKER_QUEUES: list[str] = []
MESSAGES = 600


@pytest.fixture
def outage_pg() -> Iterator[PostgresServer]:
    """A cluster of this test's own (the session's stays up for the other tests), which its crash must not lose
    acknowledged commits of (the faster test clusters may: analyses stored just before the crash went missing)."""
    with PostgresServer(crash_safe=True) as server:
        yield server


@pytest.fixture
async def outage_store(outage_pg: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SqlStore]:
    url = await db.create_database(outage_pg, "worker")
    monkeypatch.setenv("DATABASE_URL", url)  # the worker process and this test's store
    get_settings.cache_clear()
    store = open_store(job_settings())
    yield store
    await store.aclose()
    get_settings.cache_clear()


async def _rows(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url.replace("postgresql://", "postgres://"))
    try:
        await conn.execute("SELECT set_config('worker.tenant_id', 't1', false)")  # row-level security
        out = {}
        for q in (
            "SELECT count(*) FROM messages",
            "SELECT count(DISTINCT (account_id, mailbox, uidvalidity, uid)) FROM messages",
            "SELECT count(DISTINCT content_id) FROM messages",
            "SELECT count(*) FROM analyses",
            "SELECT count(*) FROM analysis_requests",
        ):
            out[q.removeprefix("SELECT ")] = int(await conn.fetchval(q))
        return out
    finally:
        await conn.close()


@pytest.mark.timeout(400)
async def test_jobs_survive_a_postgres_crash_mid_sync(
    redis_url: str,
    redis: Redis,
    dovecot: DovecotServer,
    outage_pg: PostgresServer,
    outage_store: SqlStore,
) -> None:
    dovecot.append([make_mail(i, body=f"{i} " + "x" * 20_000) for i in range(MESSAGES)])
    account = await mail_account(outage_store, imap_port=dovecot.port)
    client = Client(redis, job_settings(), registry=job_registry())
    job = await client.enqueue("sync_mailbox", {"tenant_id": "t1", "account_id": account.id, "mailbox": "INBOX"})
    url = os.environ["DATABASE_URL"]
    no_ai_rate_limit = {"AI_TENANT_RATE_LIMIT": "1000000"}  # (60/min per tenant by default)
    proc = spawn_worker(redis_url, ["email-sync", "ai-analysis"], {"DATABASE_URL": url, **no_ai_rate_limit})
    try:

        async def some_stored() -> bool:
            return (await outage_store.get_sync_state("t1", account.id, "INBOX")).highest_uid > 0

        await eventually(some_stored, within=60)
        before = (await outage_store.get_sync_state("t1", account.id, "INBOX")).highest_uid
        assert before < MESSAGES  # mid-sync: batches are still being fetched and stored
        await asyncio.to_thread(outage_pg.stop, mode="immediate")
        await asyncio.sleep(4)  # the worker's store calls fail meanwhile: jobs are deferred, not failed
        during = await client.status(job.job_id)
        assert during.state not in ("complete", "dead")
        await asyncio.to_thread(outage_pg.start)

        status = await client.wait(job.job_id, timeout=180)
        assert status.state == "complete", status.error
        assert status.attempts == 1  # the outage cost no attempt

        async def all_analysed() -> bool:
            return (await _rows(url))["count(*) FROM analyses"] == MESSAGES

        try:
            await eventually(all_analysed, within=180, every=0.5)
        except AssertionError:
            state = {k.decode(): await redis.type(k) for k in await redis.keys("*ai-analysis*")}
            sizes = {}
            for k, t in state.items():
                sizes[k] = (t, await redis.zcard(k) if t == b"zset" else await redis.hlen(k) if t == b"hash" else None)
            kinds: dict[str, int] = {}
            for _, e in await Events(redis).read(count=1_000_000):
                if e.get("function") == "analyse_message":
                    kinds[e["type"]] = kinds.get(e["type"], 0) + 1
            raise AssertionError(f"{await _rows(url)} {sizes} {kinds}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 20)
            except Exception:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    events = await Events(redis).read(count=1_000_000)
    deferred = {e.get("function") for _, e in events if e["type"] == "deferred"}
    assert "sync_mailbox" in deferred  # the sync met the outage and was put off, not failed
    assert await outage_store.list_quarantined("t1") == []  # no message blamed for the outage
    assert await DeadLetters(redis, client).count() == 0
    assert await _rows(url) == {
        "count(*) FROM messages": MESSAGES,
        "count(DISTINCT (account_id, mailbox, uidvalidity, uid)) FROM messages": MESSAGES,
        "count(DISTINCT content_id) FROM messages": MESSAGES,
        "count(*) FROM analyses": MESSAGES,
        "count(*) FROM analysis_requests": MESSAGES,
    }
    assert await outage_store.known_uids("t1", account.id, "INBOX", status.result["uidvalidity"]) == list(
        range(1, MESSAGES + 1)
    )
