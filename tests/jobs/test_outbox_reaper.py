"""The reaper gives items whose delivery job died a final state (a real worker runs it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.jobs.test_send_email import outbox
from tests.support import job_registry, job_settings, mail_account
from worker.jobs.delivery import REAP_JOB, RESOLVE_JOB
from worker.runtime import Client, Events, Worker, keys
from worker.store import DeliveryStep, OutboxItem, OutboxStatus, RedisStore


@pytest.fixture
async def reaper(redis_url: str) -> AsyncIterator[Worker]:
    settings = job_settings().model_copy(update={"send_stale_s": 0.2, "send_ambiguous_grace_s": 60})
    async with Worker(redis_url, queues=["send-email"], settings=settings, registry=job_registry()) as w:
        yield w


async def left_sending(store: RedisStore, item: OutboxItem, step: DeliveryStep, job_id: str) -> None:
    """What an attempt leaves behind when its worker dies at `step` and its job is never run again."""
    claimed = await store.transition_outbox(
        "t1", item.id, [OutboxStatus.QUEUED], OutboxStatus.SENDING, send_attempt="dead-attempt", send_job_id=job_id
    )
    assert claimed is not None
    await store.transition_outbox(
        "t1",
        item.id,
        [OutboxStatus.SENDING],
        OutboxStatus.SENDING,
        match={"send_attempt": "dead-attempt"},
        delivery_step=step,
    )


async def test_reaper_finalises_items_whose_job_died(
    reaper: Worker, client: Client, store: RedisStore, redis: Redis
) -> None:
    account = await mail_account(store)
    never = await outbox(store, account, subject="died before DATA")
    maybe = await outbox(store, account, subject="died after the end of DATA")
    alive = await outbox(store, account, subject="its job is waiting to run")
    await left_sending(store, never, DeliveryStep.RCPT, "gone-job")
    await left_sending(store, maybe, DeliveryStep.DATA_END, "gone-job-2")
    waiting = await client.enqueue(
        "send_email", {"tenant_id": "t1", "account_id": account.id, "outbox_id": alive.id}, defer_by=3600
    )
    await left_sending(store, alive, DeliveryStep.MAIL, waiting.job_id)
    await asyncio.sleep(0.3)  # older than send_stale_s

    status = await client.wait((await client.enqueue(REAP_JOB, {})).job_id, timeout=20)
    assert status.state == "complete" and status.result == {"failed": 1, "ambiguous": 1, "lookups": 0}
    failed = await store.get_outbox("t1", never.id)
    assert failed is not None and failed.status is OutboxStatus.FAILED and failed.resolution == "reaper"
    assert "never handed over" in (failed.last_error or "")
    unknown = await store.get_outbox("t1", maybe.id)
    assert unknown is not None and unknown.status is OutboxStatus.AMBIGUOUS
    untouched = await store.get_outbox("t1", alive.id)
    assert untouched is not None and untouched.status is OutboxStatus.SENDING
    lookup_id = await redis.hget(keys.idempotency(RESOLVE_JOB, f"resolve:t1:{maybe.id}:0"), "j")
    assert lookup_id is not None and (await client.status(lookup_id.decode())).state == "deferred"  # after the grace
    events = {f["outbox_id"]: f["status"] for _, f in await Events(redis).read(count=1000) if f.get("type") == "outbox"}
    assert events == {never.id: "failed", maybe.id: "ambiguous"}
