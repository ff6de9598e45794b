"""Tenant routes of the email product: accounts (secrets write-only), sync, send now or later, analysis.

Everything here is under /v1/tenants/{tenant_id}: the admin token may act for any tenant, a tenant token
only for its own. Jobs enqueued here belong to the tenant of the path.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, Field

from worker.api.deps import Principal, Services, Svc, Tenant, found, record_owner
from worker.api.errors import InvalidInput
from worker.api.idempotency import IdempotencyKey, idempotent
from worker.api.jobs import Accepted, When, enqueue_as
from worker.jobs.scheduled_emails import cancel_scheduled_email, reschedule_email, schedule_email
from worker.jobs.send_email import enqueue_send
from worker.store import Account, AccountIn, OutboxEvent, OutboxIn, OutboxItem, RecipientOutcome, StoredMessage
from worker.watch.notify import notify_accounts_changed

router = APIRouter(prefix="/v1/tenants/{tenant_id}", tags=["mail"])


class AccountOut(BaseModel):
    """An account as the API shows it: everything but the secret."""

    id: str
    tenant_id: str
    email: str
    username: str
    imap_host: str
    imap_port: int
    imap_tls: str
    smtp_host: str
    smtp_port: int
    smtp_tls: str
    mailboxes: list[str]
    active: bool
    created_at: dt.datetime
    has_secret: bool = True
    auth_type: str = "password"
    auth_state: str = Field("ok", description="ok | auth_error (the credentials were refused: store new ones)")
    auth_error: str | None = None

    @classmethod
    def of(cls, account: Account) -> AccountOut:
        return cls.model_validate(account.model_dump(mode="json", exclude={"secret"}))


class AccountPatch(BaseModel):
    active: bool = Field(description="periodic sync on (true) or off (false)")


def _caller(tenant: str) -> Principal:
    """Jobs and idempotency keys of a tenant's resources belong to that tenant, whoever asked."""
    return Principal(tenant)


async def accepted(svc: Services, tenant: str, job_id: str, duplicate: bool = False) -> Accepted:
    """Record a job enqueued on the tenant's behalf as theirs and describe it."""
    await record_owner(svc.redis, tenant, job_id)
    st = await svc.client.status(job_id)
    return Accepted(job_id=job_id, duplicate=duplicate, state=st.state, status_url=f"/v1/jobs/{job_id}")


async def _account(svc: Services, tenant: str, account_id: str) -> Account:
    return await found(svc.store.get_account(tenant, account_id), f"account {account_id}")


@router.post("/accounts", status_code=201, response_model=AccountOut, summary="Register a mail account")
async def create_account(tenant_id: Tenant, body: AccountIn, svc: Svc) -> AccountOut:
    """The secret (password or app token) is stored encrypted and never returned."""
    account = await svc.store.create_account(tenant_id, body)
    await notify_accounts_changed(svc.redis)  # its INBOX is watched within seconds
    return AccountOut.of(account)


@router.get("/accounts", response_model=list[AccountOut], summary="The tenant's accounts")
async def list_accounts(tenant_id: Tenant, svc: Svc) -> list[AccountOut]:
    return [AccountOut.of(a) for a in await svc.store.list_accounts(tenant_id)]


@router.get("/accounts/{account_id}", response_model=AccountOut)
async def get_account(tenant_id: Tenant, account_id: str, svc: Svc) -> AccountOut:
    return AccountOut.of(await _account(svc, tenant_id, account_id))


@router.patch("/accounts/{account_id}", response_model=AccountOut, summary="Switch periodic sync on or off")
async def update_account(tenant_id: Tenant, account_id: str, body: AccountPatch, svc: Svc) -> AccountOut:
    await _account(svc, tenant_id, account_id)
    await svc.store.set_account_active(tenant_id, account_id, body.active)
    await notify_accounts_changed(svc.redis)
    return AccountOut.of(await _account(svc, tenant_id, account_id))


@router.delete("/accounts/{account_id}", status_code=204, summary="Remove an account (synced mail is kept)")
async def delete_account(tenant_id: Tenant, account_id: str, svc: Svc) -> Response:
    await _account(svc, tenant_id, account_id)
    await svc.store.delete_account(tenant_id, account_id)
    await notify_accounts_changed(svc.redis)
    return Response(status_code=204)


class SyncRequest(BaseModel):
    mailbox: str | None = Field(None, min_length=1, max_length=500, description="default: every mailbox")


class SyncAccepted(BaseModel):
    account_id: str
    jobs: list[Accepted]


@router.post("/accounts/{account_id}/sync", status_code=202, response_model=SyncAccepted, summary="Sync mailboxes now")
async def sync(
    tenant_id: Tenant,
    account_id: str,
    request: Request,
    svc: Svc,
    idempotency_key: IdempotencyKey = None,
    body: SyncRequest | None = None,
) -> Any:
    """With ``mailbox``: one ``sync_mailbox`` job. Without: one ``sync_account`` job, which discovers the
    account's folders (its ``mailboxes``: names and roles such as ``\\Sent``) and enqueues a ``sync_mailbox``
    per folder (listed in its result). New mail is analysed automatically."""

    async def produce() -> tuple[int, dict[str, Any]]:
        await _account(svc, tenant_id, account_id)
        ids = {"tenant_id": tenant_id, "account_id": account_id}
        if body and body.mailbox:
            job = await enqueue_as(svc, _caller(tenant_id), "sync_mailbox", ids | {"mailbox": body.mailbox})
        else:
            job = await enqueue_as(svc, _caller(tenant_id), "sync_account", ids)
        return 202, SyncAccepted(account_id=account_id, jobs=[job]).model_dump()

    ttl = svc.settings.idempotency_ttl
    return await idempotent(request, svc.redis, _caller(tenant_id), idempotency_key, ttl, produce)


class SendRequest(OutboxIn, When):
    """A message to send now, or later with ``run_at`` (timezone-aware) or ``delay`` (seconds)."""


class SendAccepted(BaseModel):
    outbox_id: str
    message_id: str
    status: str
    scheduled_at: dt.datetime | None = None
    job: Accepted


class OutboxOut(BaseModel):
    """An outbox item's delivery state (without the body): status, SMTP step reached, how the state was decided
    (`resolution`), each recipient's outcome (bounces included) and the item's history."""

    id: str
    account_id: str
    status: str
    needs_decision: bool
    to: list[str]
    subject: str
    message_id: str
    attempts: int
    last_error: str | None
    delivery_step: str | None
    resolution: str | None
    auto_resends: int
    recipients: dict[str, RecipientOutcome]
    history: list[OutboxEvent]
    scheduled_at: dt.datetime | None
    scheduled_job_id: str | None
    sent_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, item: OutboxItem) -> OutboxOut:
        return cls.model_validate(item.model_dump(mode="json") | {"needs_decision": item.needs_decision})


async def _outbox(svc: Services, tenant: str, outbox_id: str) -> OutboxItem:
    return await found(svc.store.get_outbox(tenant, outbox_id), f"outbox item {outbox_id}")


@router.post("/outbox", status_code=202, response_model=SendAccepted, summary="Send an email now or schedule it")
async def send(
    tenant_id: Tenant, body: SendRequest, request: Request, svc: Svc, idempotency_key: IdempotencyKey = None
) -> Any:
    """Stores the message in the outbox, then enqueues its delivery now, or at ``run_at`` / after ``delay``."""

    async def produce() -> tuple[int, dict[str, Any]]:
        body.check(svc.settings)
        await _account(svc, tenant_id, body.account_id)
        data = OutboxIn.model_validate(body.model_dump(include=set(OutboxIn.model_fields)))
        if not data.to and not data.cc and not data.bcc:
            raise InvalidInput.message(["to"], "at least one recipient is needed")
        if len(data.to) + len(data.cc) + len(data.bcc) > svc.settings.mail_max_recipients:
            limit = svc.settings.mail_max_recipients
            raise InvalidInput.message(["to"], f"at most {limit} recipients (to + cc + bcc, MAIL_MAX_RECIPIENTS)")
        item = await svc.store.create_outbox(tenant_id, data)
        if body.run_at is None and body.delay is None:
            job_id = (await enqueue_send(svc.client, item)).job_id
        else:
            job_id = await schedule_email(svc.client, svc.store, tenant_id, item.id, at=body.run_at, delay=body.delay)
            item = await _outbox(svc, tenant_id, item.id)
        job = await accepted(svc, tenant_id, job_id)
        out = SendAccepted(
            outbox_id=item.id,
            message_id=item.message_id,
            status=item.status.value,
            scheduled_at=item.scheduled_at,
            job=job,
        )
        return 202, out.model_dump(mode="json")

    ttl = svc.settings.idempotency_ttl
    return await idempotent(request, svc.redis, _caller(tenant_id), idempotency_key, ttl, produce)


@router.get("/outbox/{outbox_id}", response_model=OutboxOut, summary="Delivery state of a message")
async def get_outbox(tenant_id: Tenant, outbox_id: str, svc: Svc) -> OutboxOut:
    return OutboxOut.of(await _outbox(svc, tenant_id, outbox_id))


@router.post("/outbox/{outbox_id}/cancel", response_model=OutboxOut, summary="Cancel a scheduled send")
async def cancel_send(tenant_id: Tenant, outbox_id: str, svc: Svc) -> OutboxOut:
    item = await _outbox(svc, tenant_id, outbox_id)
    if not await cancel_scheduled_email(svc.client, svc.store, tenant_id, outbox_id):
        raise HTTPException(status.HTTP_409_CONFLICT, f"too late to cancel: the message is {item.status.value}")
    return OutboxOut.of(await _outbox(svc, tenant_id, outbox_id))


@router.post("/outbox/{outbox_id}/reschedule", response_model=OutboxOut, summary="Move a scheduled send")
async def reschedule_send(tenant_id: Tenant, outbox_id: str, when: When, svc: Svc) -> OutboxOut:
    if when.run_at is None and when.delay is None:
        raise InvalidInput.message(["run_at"], "give run_at or delay")
    when.check(svc.settings)
    item = await _outbox(svc, tenant_id, outbox_id)
    if not await reschedule_email(svc.client, svc.store, tenant_id, outbox_id, at=when.run_at, delay=when.delay):
        state = "not scheduled" if item.scheduled_job_id is None else item.status.value
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot reschedule: the message is {state}")
    return OutboxOut.of(await _outbox(svc, tenant_id, outbox_id))


async def _message(svc: Services, tenant: str, message_id: str) -> StoredMessage:
    return await found(svc.store.get_message(tenant, message_id), f"message {message_id}")


class MessageOut(BaseModel):
    """A synced message's headers and text (attachments are not kept)."""

    id: str
    account_id: str
    mailbox: str
    uid: int
    subject: str
    sender: str
    to: list[str]
    date: dt.datetime | None
    text: str
    analysis: dict[str, Any] | None


@router.get("/messages/{message_id}", response_model=MessageOut, summary="A synced message and its analysis")
async def get_message(tenant_id: Tenant, message_id: str, svc: Svc) -> MessageOut:
    msg = await _message(svc, tenant_id, message_id)
    p = msg.parsed
    return MessageOut(
        id=msg.id,
        account_id=msg.account_id,
        mailbox=msg.mailbox,
        uid=msg.uid,
        subject=p.subject,
        sender=p.from_,
        to=p.to,
        date=p.date,
        text=p.text,
        analysis=await svc.store.get_analysis(tenant_id, msg.content_id),
    )


@router.post("/messages/{message_id}/analysis", status_code=202, response_model=Accepted, summary="Request an analysis")
async def request_analysis(
    tenant_id: Tenant, message_id: str, request: Request, svc: Svc, idempotency_key: IdempotencyKey = None
) -> Any:
    """Enqueue ``analyse_message`` for a synced message (a message is analysed once per content)."""

    async def produce() -> tuple[int, dict[str, Any]]:
        await _message(svc, tenant_id, message_id)
        payload = {"tenant_id": tenant_id, "message_id": message_id}
        return 202, (await enqueue_as(svc, _caller(tenant_id), "analyse_message", payload)).model_dump()

    ttl = svc.settings.idempotency_ttl
    return await idempotent(request, svc.redis, _caller(tenant_id), idempotency_key, ttl, produce)


@router.get("/messages/{message_id}/analysis", summary="The stored analysis of a message")
async def get_analysis(tenant_id: Tenant, message_id: str, svc: Svc) -> dict[str, Any]:
    msg = await _message(svc, tenant_id, message_id)
    analysis = await svc.store.get_analysis(tenant_id, msg.content_id)
    if analysis is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not analysed yet")
    return analysis


class QuarantinedOut(BaseModel):
    """A message that could not be parsed or stored: where it is on the server, its size and the error."""

    id: str
    account_id: str
    mailbox: str
    uidvalidity: int
    uid: int
    size: int | None
    error: str
    attempts: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    resolved: bool


@router.get("/quarantine", response_model=list[QuarantinedOut], summary="Messages that could not be synced")
async def list_quarantine(
    tenant_id: Tenant,
    svc: Svc,
    account_id: str | None = None,
    include_resolved: bool = False,
    limit: int = Query(100, ge=1, le=1000),
) -> list[QuarantinedOut]:
    """Unresolved ones by default; each can be retried (``POST …/quarantine/{id}/retry``) after a fix."""
    if account_id is not None:
        await _account(svc, tenant_id, account_id)
    items = await svc.store.list_quarantined(tenant_id, account_id, include_resolved=include_resolved, limit=limit)
    return [QuarantinedOut.model_validate(q.model_dump()) for q in items]


@router.post(
    "/quarantine/{quarantine_id}/retry", status_code=202, response_model=Accepted, summary="Fetch and store it again"
)
async def retry_quarantine(
    tenant_id: Tenant, quarantine_id: str, request: Request, svc: Svc, idempotency_key: IdempotencyKey = None
) -> Any:
    """Enqueue ``retry_quarantined``: the message is fetched again, parsed and stored; resolved when that works."""

    async def produce() -> tuple[int, dict[str, Any]]:
        await found(svc.store.get_quarantined(tenant_id, quarantine_id), f"quarantined message {quarantine_id}")
        payload = {"tenant_id": tenant_id, "quarantine_id": quarantine_id}
        return 202, (await enqueue_as(svc, _caller(tenant_id), "retry_quarantined", payload)).model_dump()

    ttl = svc.settings.idempotency_ttl
    return await idempotent(request, svc.redis, _caller(tenant_id), idempotency_key, ttl, produce)
