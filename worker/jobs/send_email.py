"""send-email: deliver one outbox item at most once.

Status moves queued -> sending -> sent | failed | bounced with compare-and-set. The item's Message-ID
was created with it and is reused on every attempt. Just before DATA the item is marked
`data_started`: an attempt that finds it set (the worker died mid-delivery) or that loses the
connection after DATA records the delivery as ambiguous and does not resend. 4xx/timeouts/connection
errors before DATA retry with backoff; 5xx bounce at once (dead letter, no retry).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from worker.jobs.deps import get_store, smtp_config
from worker.mail import smtp
from worker.mail.message import build_message
from worker.runtime import Client, Enqueued, JobContext, PermanentError, job
from worker.store import OutboxItem, OutboxStatus, RecipientOutcome, RedisStore, utcnow

SEND_RATE = (60, 60.0)  # per account: at most 60 messages per minute, across all workers
_DONE = {OutboxStatus.SENT, OutboxStatus.FAILED, OutboxStatus.BOUNCED, OutboxStatus.CANCELLED}


class SendEmail(BaseModel):
    """Payload: IDs only (the account id keys the per-account rate limit)."""

    tenant_id: str
    account_id: str
    outbox_id: str


def send_key(tenant_id: str, outbox_id: str) -> str:
    """The idempotency key of delivering one outbox item."""
    return f"send:{tenant_id}:{outbox_id}"


async def enqueue_send(client: Client, item: OutboxItem) -> Enqueued:
    """Enqueue delivery of an outbox item (a second call for the same item is a no-op)."""
    payload = SendEmail(tenant_id=item.tenant_id, account_id=item.account_id, outbox_id=item.id)
    return await client.enqueue("send_email", payload, idempotency_key=send_key(item.tenant_id, item.id))


async def _finish(
    store: RedisStore, item: OutboxItem, status: OutboxStatus, error: str | None, **fields: Any
) -> OutboxItem | None:
    return await store.transition_outbox(
        item.tenant_id, item.id, [OutboxStatus.SENDING], status, last_error=error, **fields
    )


@job(
    queue="send-email",
    payload=SendEmail,
    max_attempts=6,
    idempotency_key=lambda p: send_key(p.tenant_id, p.outbox_id),
    rate_limit=SEND_RATE,
    rate_limit_key=lambda p: f"{p.tenant_id}:{p.account_id}",
    group=lambda p: f"{p.tenant_id}:{p.account_id}",
)
async def send_email(ctx: JobContext, payload: SendEmail) -> dict[str, Any]:
    """Deliver the outbox item; the result lists what each recipient's server answered."""
    store = get_store(ctx)
    item = await store.get_outbox(payload.tenant_id, payload.outbox_id)
    if item is None or item.account_id != payload.account_id:
        raise PermanentError(f"outbox item {payload.outbox_id} not found for this account")
    if item.status in _DONE:
        return {"status": item.status.value, "message_id": item.message_id, "already": True}
    if item.status is OutboxStatus.SENDING and item.data_started:
        await store.update_outbox(
            item.tenant_id, item.id, ambiguous=True, last_error="an earlier attempt died after DATA"
        )
        raise PermanentError("delivery ambiguous: an earlier attempt handed the message over; not resent")
    now = utcnow()
    first_start = item.send_started_at or now
    lateness = (first_start - item.scheduled_at).total_seconds() if item.scheduled_at else None
    claimed = await store.transition_outbox(
        item.tenant_id,
        item.id,
        [OutboxStatus.QUEUED, OutboxStatus.SENDING],
        OutboxStatus.SENDING,
        attempts=item.attempts + 1,
        send_started_at=first_start,
        lateness_s=lateness,
    )
    if claimed is None:  # cancelled or finished meanwhile
        current = await store.get_outbox(item.tenant_id, item.id)
        return {"status": current.status.value if current else "missing", "already": True}
    item = claimed

    account = await store.get_account(item.tenant_id, item.account_id)
    try:
        if account is None:
            raise ValueError(f"account {item.account_id} not found")
        config = smtp_config(account)
        message = build_message(
            sender=item.sender,
            sender_name=item.sender_name,
            to=item.to,
            cc=item.cc,
            subject=item.subject,
            message_id=item.message_id,
            text=item.text,
            html=item.html,
        )
    except ValueError as exc:  # missing account, bad TLS config, invalid address, header injection
        await _finish(store, item, OutboxStatus.FAILED, str(exc))
        raise PermanentError(str(exc)) from None

    async def before_data() -> None:
        await store.update_outbox(item.tenant_id, item.id, data_started=True)

    try:
        result = await smtp.send(
            config, message, sender=item.sender, recipients=item.envelope(), before_data=before_data
        )
    except smtp.AmbiguousSmtpError as exc:
        await store.update_outbox(item.tenant_id, item.id, ambiguous=True, last_error=str(exc))
        raise PermanentError(f"delivery ambiguous, not resent: {exc}") from None
    except smtp.PermanentSmtpError as exc:
        status = OutboxStatus.FAILED if exc.stage in ("connect", "auth") else OutboxStatus.BOUNCED
        await _finish(store, item, status, str(exc), data_started=False)
        raise PermanentError(f"{status.value}: {exc}") from None
    except smtp.TransientSmtpError as exc:
        last = ctx.attempt >= ctx.max_attempts
        await _finish(store, item, OutboxStatus.FAILED if last else OutboxStatus.QUEUED, str(exc), data_started=False)
        raise
    outcomes = {
        a: RecipientOutcome(state=r.state, code=r.code, message=r.message) for a, r in result.recipients.items()
    }
    await _finish(store, item, OutboxStatus.SENT, None, recipients=outcomes, sent_at=utcnow())
    return {
        "status": OutboxStatus.SENT.value,
        "message_id": item.message_id,
        "accepted": result.accepted,
        "refused": {a: r.code for a, r in result.recipients.items() if r.state != "accepted"},
        "lateness_s": lateness,
    }
