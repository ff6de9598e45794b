"""send-email: deliver one outbox item at most once, and always to a final state.

An attempt claims the item (queued/sending -> sending, with a fresh attempt token) and records the
SMTP step it reaches, compare-and-set on that token, before taking it: connect, mail, rcpt, data,
data_end (just before the final "." of DATA is written), replied (with the final status). A later
attempt that finds the item `sending` knows how far the dead one got: before data_end the server never
saw the end of the message, so resending is safe; at data_end delivery is unknown and the item becomes
`ambiguous` (settled from the Sent folder or by an operator, see `worker.jobs.delivery`). A stale token
(a newer attempt took over) stops an attempt before its next step. The Message-ID and Date were fixed
when the item was created / first attempted, so a resend is the same message. 4xx, timeouts and
connection errors before the end of DATA retry with backoff; 5xx bounce at once (dead letter, no retry).
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel

from worker.jobs.delivery import emit, mark_ambiguous, redact, send_key
from worker.jobs.deps import get_store, smtp_config
from worker.jobs.mail_auth import AuthFailed, AuthUnavailable, send_as_account
from worker.mail import smtp
from worker.mail.message import build_message
from worker.runtime import Client, Enqueued, JobContext, PermanentError, job
from worker.store import (
    FINAL_STATUSES,
    DeliveryStep,
    OutboxItem,
    OutboxStatus,
    RecipientOutcome,
    Store,
    utcnow,
)

SEND_RATE = (60, 60.0)  # per account: at most 60 messages per minute, across all workers
__all__ = ["SEND_RATE", "SendEmail", "enqueue_send", "send_email", "send_key"]


class SendEmail(BaseModel):
    """Payload: IDs only (the account id keys the per-account rate limit)."""

    tenant_id: str
    account_id: str
    outbox_id: str


class Superseded(Exception):
    """A newer attempt owns the item (or it left `sending`): this attempt must stop."""


async def enqueue_send(client: Client, item: OutboxItem) -> Enqueued:
    """Enqueue delivery of an outbox item (a second call for the same item is a no-op)."""
    payload = SendEmail(tenant_id=item.tenant_id, account_id=item.account_id, outbox_id=item.id)
    return await client.enqueue("send_email", payload, idempotency_key=send_key(item.tenant_id, item.id))


async def _finish(
    ctx: JobContext, store: Store, item: OutboxItem, status: OutboxStatus, note: str | None, **fields: Any
) -> OutboxItem | None:
    """The attempt's last word: sending (or ambiguous, if the reaper guessed) -> status, if it still owns it."""
    done = await store.transition_outbox(
        item.tenant_id,
        item.id,
        [OutboxStatus.SENDING, OutboxStatus.AMBIGUOUS],
        status,
        match={"send_attempt": item.send_attempt},
        last_error=note if status is not OutboxStatus.SENT else None,
        history=item.noted(status, note or status.value, fields.get("delivery_step", item.delivery_step)),
        **fields,
    )
    if done is not None:
        await emit(ctx.redis, ctx.settings.events_maxlen, done, note or status.value)
    return done


def _outcomes(recipients: dict[str, smtp.RecipientResult]) -> dict[str, RecipientOutcome]:
    return {a: RecipientOutcome(state=r.state, code=r.code, message=r.message) for a, r in recipients.items()}


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
    """Deliver the outbox item; the result counts accepted and refused recipients (each one's answer is in the
    outbox item). Errors and results that go to Redis have their addresses redacted."""
    store = get_store(ctx)
    item = await store.get_outbox(payload.tenant_id, payload.outbox_id)
    if item is None or item.account_id != payload.account_id:
        raise PermanentError(f"outbox item {payload.outbox_id} not found for this account")
    if item.status in FINAL_STATUSES or item.status is OutboxStatus.AMBIGUOUS:
        return {"status": item.status.value, "outbox_id": item.id, "already": True}
    if item.status is OutboxStatus.SENDING and item.delivery_step is DeliveryStep.DATA_END:
        note = "an earlier attempt died after the end of DATA was sent, before the reply was recorded"
        await mark_ambiguous(ctx, store, item, note)
        return {"status": OutboxStatus.AMBIGUOUS.value, "outbox_id": item.id, "reason": note}
    resumed = item.status is OutboxStatus.SENDING  # an earlier attempt died before the end of DATA
    now = utcnow()
    first_start = item.send_started_at or now
    lateness = (first_start - item.scheduled_at).total_seconds() if item.scheduled_at else None
    note = f"resent: an earlier attempt died at step {item.delivery_step or 'start'}" if resumed else "sending"
    claimed = await store.transition_outbox(
        item.tenant_id,
        item.id,
        [OutboxStatus.QUEUED, OutboxStatus.SENDING],
        OutboxStatus.SENDING,
        match={"send_attempt": item.send_attempt, "delivery_step": item.delivery_step},
        attempts=item.attempts + 1,
        send_attempt=uuid.uuid4().hex,
        send_job_id=ctx.job_id,
        delivery_step=None,
        send_started_at=first_start,
        lateness_s=lateness,
        history=item.noted(OutboxStatus.SENDING, note),
    )
    if claimed is None:  # cancelled, finished or taken over meanwhile
        current = await store.get_outbox(item.tenant_id, item.id)
        return {"status": current.status.value if current else "missing", "already": True}
    owned: OutboxItem = claimed

    account = await store.get_account(owned.tenant_id, owned.account_id)
    try:
        if account is None:
            raise ValueError(f"account {owned.account_id} not found")
        smtp_config(account)  # a bad TLS setting is a permanent failure
        message = build_message(
            sender=owned.sender,
            sender_name=owned.sender_name,
            to=owned.to,
            cc=owned.cc,
            subject=owned.subject,
            message_id=owned.message_id,
            text=owned.text,
            html=owned.html,
            date=first_start,
        )
    except ValueError as exc:  # missing account, bad TLS config, invalid address, header injection
        await _finish(ctx, store, owned, OutboxStatus.FAILED, str(exc), resolution="invalid")
        raise PermanentError(redact(str(exc))) from None

    async def record_step(step: DeliveryStep) -> None:
        nonlocal owned
        moved = await store.transition_outbox(
            owned.tenant_id,
            owned.id,
            [OutboxStatus.SENDING],
            OutboxStatus.SENDING,
            match={"send_attempt": owned.send_attempt},
            delivery_step=step,
        )
        if moved is None:
            raise Superseded(f"another attempt owns outbox item {owned.id}; stopped before {step.value}")
        owned = moved

    async def record_reply(result: smtp.SendResult) -> None:
        await _finish(
            ctx,
            store,
            owned,
            OutboxStatus.SENT,
            f"accepted: {result.code} {result.message}"[:200],
            recipients=_outcomes(result.recipients),
            sent_at=utcnow(),
            resolution="smtp",
            delivery_step=DeliveryStep.REPLIED,
        )

    try:
        result = await send_as_account(  # OAuth2: a refused cached token is refreshed once (before MAIL FROM)
            ctx,
            store,
            account,
            lambda config: smtp.send(
                config,
                message,
                sender=owned.sender,
                recipients=owned.envelope(),
                on_step=record_step,
                on_reply=record_reply,
            ),
        )
    except Superseded as exc:
        return {"status": "superseded", "reason": str(exc)}
    except AuthUnavailable:  # no access token yet (token endpoint busy): back to the queue, no attempt used
        note = "waiting for an OAuth2 access token"
        await _finish(ctx, store, owned, OutboxStatus.QUEUED, note, send_attempt=None, delivery_step=None)
        raise
    except AuthFailed as exc:
        await _finish(ctx, store, owned, OutboxStatus.FAILED, str(exc), resolution="auth")
        raise AuthFailed(redact(str(exc))) from None
    except smtp.AmbiguousSmtpError as exc:
        await mark_ambiguous(ctx, store, owned, str(exc))
        return {"status": OutboxStatus.AMBIGUOUS.value, "outbox_id": owned.id, "reason": redact(str(exc))}
    except smtp.PermanentSmtpError as exc:
        status = OutboxStatus.FAILED if exc.stage in ("connect", "auth") else OutboxStatus.BOUNCED
        answers = {"recipients": _outcomes(exc.recipients)} if exc.recipients else {}
        await _finish(
            ctx, store, owned, status, str(exc), resolution="smtp", delivery_step=DeliveryStep.REPLIED, **answers
        )
        raise PermanentError(f"{status.value}: {redact(str(exc))}") from None
    except smtp.TransientSmtpError as exc:
        last = ctx.attempt >= ctx.max_attempts
        status = OutboxStatus.FAILED if last else OutboxStatus.QUEUED
        fields: dict[str, Any] = {"resolution": "smtp"} if last else {"send_attempt": None, "delivery_step": None}
        await _finish(ctx, store, owned, status, str(exc), **fields)
        raise smtp.TransientSmtpError(redact(str(exc)), exc.code, exc.stage) from None
    # counts only: the recipients' addresses and answers are in the outbox item (Redis keeps no addresses)
    return {
        "status": OutboxStatus.SENT.value,
        "outbox_id": owned.id,
        "accepted": len(result.accepted),
        "refused": sum(r.state != "accepted" for r in result.recipients.values()),
        "lateness_s": lateness,
    }
