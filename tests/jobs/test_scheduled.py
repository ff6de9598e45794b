"""Scheduled sends: defer-until / defer-by, cancel and reschedule before firing, lateness."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.helpers import eventually
from tests.support import mail_account
from tests.support.smtp import SmtpServer
from worker.jobs.scheduled_emails import cancel_scheduled_email, reschedule_email, schedule_email
from worker.runtime import Client, Worker
from worker.store import Account, OutboxIn, OutboxItem, OutboxStatus, SqlStore

WORKER_QUEUES = ["scheduled-emails", "send-email"]


@pytest.fixture
async def account(store: SqlStore, smtp: SmtpServer) -> Account:
    return await mail_account(store, smtp_port=smtp.port)


async def new_item(store: SqlStore, account: Account) -> OutboxItem:
    data = OutboxIn(account_id=account.id, sender="alice@example.com", to=["bob@example.com"], subject="Later")
    return await store.create_outbox("t1", data)


async def sent(store: SqlStore, item: OutboxItem) -> OutboxItem:
    async def done() -> bool:
        current = await store.get_outbox("t1", item.id)
        return current is not None and current.status is OutboxStatus.SENT

    await eventually(done, within=20)
    result = await store.get_outbox("t1", item.id)
    assert result is not None
    return result


async def test_defer_until_in_another_timezone_sends_once_and_measures_lateness(
    worker: Worker, client: Client, store: SqlStore, smtp: SmtpServer, account: Account
) -> None:
    item = await new_item(store, account)
    local = timezone(timedelta(hours=-5))
    at = (datetime.now(UTC) + timedelta(seconds=0.5)).astimezone(local)
    await schedule_email(client, store, "t1", item.id, at=at)
    scheduled = await store.get_outbox("t1", item.id)
    assert scheduled is not None and scheduled.scheduled_at == at and scheduled.scheduled_at.tzinfo == UTC
    done = await sent(store, item)
    assert done.send_started_at is not None and done.send_started_at >= at
    assert done.lateness_s is not None and done.lateness_s >= 0
    assert len(smtp.messages) == 1


async def test_defer_by_and_input_checks(
    worker: Worker, client: Client, store: SqlStore, smtp: SmtpServer, account: Account
) -> None:
    item = await new_item(store, account)
    with pytest.raises(ValueError, match="timezone-aware"):
        await schedule_email(client, store, "t1", item.id, at=datetime.now() + timedelta(seconds=1))
    with pytest.raises(ValueError, match="exactly one"):
        await schedule_email(client, store, "t1", item.id, at=datetime.now(UTC), delay=1)
    with pytest.raises(ValueError, match="exactly one"):
        await schedule_email(client, store, "t1", item.id)
    await schedule_email(client, store, "t1", item.id, delay=0.3)
    with pytest.raises(ValueError, match="unscheduled"):
        await schedule_email(client, store, "t1", item.id, delay=5)  # already scheduled
    await sent(store, item)
    assert len(smtp.messages) == 1


async def test_cancelled_email_is_never_sent(
    worker: Worker, client: Client, store: SqlStore, smtp: SmtpServer, account: Account
) -> None:
    item = await new_item(store, account)
    job_id = await schedule_email(client, store, "t1", item.id, delay=0.5)
    assert await cancel_scheduled_email(client, store, "t1", item.id)
    assert not await cancel_scheduled_email(client, store, "t1", item.id)
    assert not await reschedule_email(client, store, "t1", item.id, delay=0.1)
    assert (await client.status(job_id)).state in ("cancelled", "not_found")
    await asyncio.sleep(1.0)  # well past the original time
    current = await store.get_outbox("t1", item.id)
    assert current is not None and current.status is OutboxStatus.CANCELLED and smtp.messages == []


async def test_rescheduled_later_is_sent_once_at_the_new_time(
    worker: Worker, client: Client, store: SqlStore, smtp: SmtpServer, account: Account
) -> None:
    item = await new_item(store, account)
    await schedule_email(client, store, "t1", item.id, delay=0.3)
    new_at = datetime.now(UTC) + timedelta(seconds=1.2)
    assert await reschedule_email(client, store, "t1", item.id, at=new_at)
    done = await sent(store, item)
    assert done.send_started_at is not None and done.send_started_at >= new_at and done.scheduled_at == new_at
    await asyncio.sleep(0.3)
    assert len(smtp.messages) == 1


async def test_rescheduled_earlier_fires_at_the_new_time(
    worker: Worker, client: Client, store: SqlStore, smtp: SmtpServer, account: Account
) -> None:
    item = await new_item(store, account)
    await schedule_email(client, store, "t1", item.id, delay=3600)
    assert await reschedule_email(client, store, "t1", item.id, delay=0.2)
    done = await sent(store, item)
    assert done.scheduled_at is not None and done.send_started_at is not None
    assert done.send_started_at >= done.scheduled_at and len(smtp.messages) == 1


async def test_a_superseded_firing_does_nothing(
    worker: Worker, client: Client, store: SqlStore, smtp: SmtpServer, account: Account
) -> None:
    item = await new_item(store, account)
    stale = await client.enqueue("send_scheduled_email", {"tenant_id": "t1", "outbox_id": item.id})
    assert (await client.wait(stale.job_id, timeout=10)).result == {"status": "superseded"}
    assert smtp.messages == []
