"""scheduled-emails: send an outbox item at a time (defer-until) or after a delay (defer-by).

`schedule_email` records the time (UTC) and the firing job's id on the item, then enqueues that job
deferred. When it fires it checks the item: cancelled -> nothing; a newer schedule -> nothing; too
early (rescheduled later meanwhile) -> defer again; otherwise it hands over to `send_email`, which
is idempotent per item and measures lateness (send start minus scheduled time).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from worker.jobs.deps import get_store
from worker.jobs.send_email import SendEmail, send_key
from worker.runtime import Client, Defer, JobContext, PermanentError, job
from worker.store import OutboxStatus, Store, utcnow


class ScheduledSend(BaseModel):
    """Payload: IDs only."""

    tenant_id: str
    outbox_id: str


def _when(at: datetime | None, delay: float | None) -> datetime:
    if (at is None) == (delay is None):
        raise ValueError("give exactly one of `at` (timezone-aware datetime) or `delay` (seconds)")
    if at is not None:
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("`at` must be timezone-aware (e.g. datetime(..., tzinfo=UTC))")
        return at.astimezone(UTC)
    assert delay is not None
    if delay < 0:
        raise ValueError("`delay` must not be negative")
    return utcnow() + timedelta(seconds=delay)


async def schedule_email(
    client: Client,
    store: Store,
    tenant_id: str,
    outbox_id: str,
    *,
    at: datetime | None = None,
    delay: float | None = None,
) -> str:
    """Schedule a queued, unscheduled outbox item; returns the id of the job that will fire."""
    when = _when(at, delay)
    item = await store.get_outbox(tenant_id, outbox_id)
    if item is None or item.status is not OutboxStatus.QUEUED or item.scheduled_job_id:
        raise ValueError(f"outbox item {outbox_id} is not a queued, unscheduled item")
    job_id = "sched-" + uuid.uuid4().hex
    await store.update_outbox(tenant_id, outbox_id, scheduled_at=when, scheduled_job_id=job_id)
    payload = ScheduledSend(tenant_id=tenant_id, outbox_id=outbox_id)
    await client.enqueue("send_scheduled_email", payload, defer_until=when, job_id=job_id)
    return job_id


async def cancel_scheduled_email(client: Client, store: Store, tenant_id: str, outbox_id: str) -> bool:
    """Cancel before it is sent; False when sending already began (or the item is gone)."""
    item = await store.transition_outbox(tenant_id, outbox_id, [OutboxStatus.QUEUED], OutboxStatus.CANCELLED)
    if item is None:
        return False
    if item.scheduled_job_id:
        await client.cancel(item.scheduled_job_id)  # the job would find the item cancelled anyway
    return True


async def reschedule_email(
    client: Client,
    store: Store,
    tenant_id: str,
    outbox_id: str,
    *,
    at: datetime | None = None,
    delay: float | None = None,
) -> bool:
    """Move a scheduled item to a new time; False when it already fired or is not scheduled."""
    when = _when(at, delay)
    item = await store.get_outbox(tenant_id, outbox_id)
    if item is None or item.status is not OutboxStatus.QUEUED or not item.scheduled_job_id:
        return False
    await store.update_outbox(tenant_id, outbox_id, scheduled_at=when)  # first: a firing job re-checks it
    return await client.reschedule(item.scheduled_job_id, defer_until=when)


@job(queue="scheduled-emails", payload=ScheduledSend, max_attempts=5)
async def send_scheduled_email(ctx: JobContext, payload: ScheduledSend) -> dict[str, Any]:
    """Fire a schedule: hand the item to send_email unless it was cancelled, replaced or moved later."""
    store = get_store(ctx)
    item = await store.get_outbox(payload.tenant_id, payload.outbox_id)
    if item is None:
        raise PermanentError(f"outbox item {payload.outbox_id} not found")
    if item.status is OutboxStatus.CANCELLED:
        return {"status": "cancelled"}
    if item.scheduled_job_id != ctx.job_id:
        return {"status": "superseded"}
    if item.status is not OutboxStatus.QUEUED:
        return {"status": item.status.value}
    now = utcnow()
    if item.scheduled_at is not None and (early := (item.scheduled_at - now).total_seconds()) > 0:
        raise Defer("not due yet (rescheduled later, or clocks differ)", delay=early)
    fired_late = (now - item.scheduled_at).total_seconds() if item.scheduled_at else None
    send = SendEmail(tenant_id=item.tenant_id, account_id=item.account_id, outbox_id=item.id)
    r = await ctx.enqueue("send_email", send.model_dump(), idempotency_key=send_key(item.tenant_id, item.id))
    return {"status": "handed_over", "send_job_id": r.job_id, "fired_late_s": fired_late}
