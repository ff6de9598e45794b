"""Every send reaches a final state: outbox events, ambiguous sends settled from the Sent folder, the reaper
of items whose job died, and an operator's decisions.

An item is `ambiguous` only when an attempt wrote the end of DATA and no reply was recorded. After
`send_ambiguous_grace_s` the account's Sent folder is searched for the item's Message-ID over IMAP
(`UID SEARCH HEADER Message-ID`): found -> `sent`. Not found means "not delivered" only on a server that
files submitted mail in Sent (Gmail does, most do not); that is established by a probe, the newest item
of the account that the server confirmed with 250 earlier: if the probe is in Sent, the ambiguous item is
resent once (recorded); otherwise the item stays `ambiguous` and needs a decision (mark sent, resend, fail).
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel
from redis.asyncio import Redis

from worker.jobs.deps import get_store
from worker.jobs.mail_auth import account_imap
from worker.mail.folders import find_roles
from worker.mail.imap import ImapError, ImapSession, quote
from worker.runtime import Client, JobContext, PermanentError, RetryLater, job, keys
from worker.store import (
    DeliveryStep,
    OutboxItem,
    OutboxStatus,
    RecipientOutcome,
    Store,
    utcnow,
)

RESOLVE_JOB = "resolve_ambiguous_send"
REAP_JOB = "reap_outbox"
_LIVE_JOB = {"queued", "deferred", "active"}
Action = Literal["mark_sent", "resend", "fail"]


def send_key(tenant_id: str, outbox_id: str) -> str:
    """The idempotency key of delivering one outbox item (a resend gets a suffix)."""
    return f"send:{tenant_id}:{outbox_id}"


_ADDRESS = re.compile(r"[^\s<>()\[\],;:\"'@]+@[^\s<>()\[\],;:\"'@]+")


def redact(text: str) -> str:
    """Text bound for Redis (job errors and results, events): every email address replaced by `[address]`.
    SMTP replies echo recipients; the full text stays in the store's outbox item (history, last_error)."""
    return _ADDRESS.sub("[address]", text)


async def emit(redis: Redis, maxlen: int, item: OutboxItem, note: str) -> None:
    """An `outbox` event on the runtime's event stream (tied to the item's send job for tenant filtering)."""
    fields = {
        "type": "outbox",
        "job_id": item.send_job_id or "",
        "function": "send_email",
        "queue": "send-email",
        "tenant_id": item.tenant_id,
        "outbox_id": item.id,
        "status": item.status.value,
        "step": item.delivery_step.value if item.delivery_step else "",
        "note": redact(note)[:300],
    }
    await redis.xadd(keys.EVENTS, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]


async def _emit(ctx: JobContext, item: OutboxItem, note: str) -> None:
    await emit(ctx.redis, ctx.settings.events_maxlen, item, note)


async def enqueue_send_job(client: Client, item: OutboxItem, suffix: str = "") -> str:
    """Enqueue delivery of `item` (one job per key: a repeated call returns the same job)."""
    payload = {"tenant_id": item.tenant_id, "account_id": item.account_id, "outbox_id": item.id}
    key = send_key(item.tenant_id, item.id) + suffix
    return (await client.enqueue("send_email", payload, idempotency_key=key)).job_id


async def schedule_lookup(client: Client, item: OutboxItem, delay: float) -> None:
    """Schedule the Sent-folder lookup of an ambiguous item (once per automatic resend round)."""
    await client.enqueue(
        RESOLVE_JOB,
        {"tenant_id": item.tenant_id, "outbox_id": item.id},
        defer_by=delay,
        idempotency_key=f"resolve:{item.tenant_id}:{item.id}:{item.auto_resends}",
    )


async def _move(
    store: Store,
    item: OutboxItem,
    source: OutboxStatus,
    target: OutboxStatus,
    note: str,
    *,
    at_step: bool = False,
    same_step: bool = False,
    **fields: Any,
) -> OutboxItem | None:
    """``source`` -> ``target`` only if the item's send attempt (and, with ``same_step``, its delivery step) is still
    the one read, else None; the history entry names the delivery step with ``at_step``."""
    match: dict[str, Any] = {"send_attempt": item.send_attempt}
    if same_step:
        match["delivery_step"] = item.delivery_step
    history = item.noted(target, note, item.delivery_step) if at_step else item.noted(target, note)
    return await store.transition_outbox(
        item.tenant_id, item.id, [source], target, match=match, history=history, **fields
    )


async def mark_ambiguous(ctx: JobContext, store: Store, item: OutboxItem, note: str) -> OutboxItem | None:
    """SENDING -> AMBIGUOUS for the attempt that owns the item; schedules the Sent-folder lookup."""
    done = await _move(store, item, OutboxStatus.SENDING, OutboxStatus.AMBIGUOUS, note, at_step=True, last_error=note)
    if done is not None:
        await _emit(ctx, done, note)
        await schedule_lookup(ctx.client, done, ctx.settings.send_ambiguous_grace_s)
    return done


# -- the Sent-folder lookup ------------------------------------------------------------------------


class ResolveSend(BaseModel):
    """Payload: IDs only."""

    tenant_id: str
    outbox_id: str


async def find_sent_folder(session: ImapSession) -> str | None:
    """The account's Sent mailbox: SPECIAL-USE \\Sent (RFC 6154), else a common name; None if there is none."""
    return find_roles(await session.list_mailboxes()).get("\\Sent")


async def in_folder(session: ImapSession, message_id: str) -> bool:
    """Does the selected mailbox hold a message with this Message-ID?"""
    return bool(await session.uid_search(f"HEADER Message-ID {quote(message_id)}"))


async def _probe(store: Store, item: OutboxItem, settled_before: Any) -> OutboxItem | None:
    """The newest other item of the account known delivered (a 250 reply, or found in Sent) before
    `settled_before`."""
    for other in await store.list_outbox(item.tenant_id, status=OutboxStatus.SENT, account_id=item.account_id):
        confirmed = other.resolution in ("smtp", "sent_folder")  # a 250 reply, or found in Sent itself
        if other.id != item.id and confirmed and other.sent_at and other.sent_at <= settled_before:
            return other
    return None


async def _needs_decision(ctx: JobContext, store: Store, item: OutboxItem, reason: str) -> dict[str, Any]:
    note = f"needs a decision: {reason}"
    updated = await store.update_outbox(
        item.tenant_id, item.id, last_error=note, history=item.noted(OutboxStatus.AMBIGUOUS, note)
    )
    await _emit(ctx, updated, note)
    return {"status": "ambiguous", "needs_decision": True, "reason": redact(reason)}


async def settle_sent(
    redis: Redis, maxlen: int, store: Store, item: OutboxItem, how: str, note: str
) -> OutboxItem | None:
    """AMBIGUOUS (or FAILED, by an operator) -> SENT; recipients without an answer count as accepted."""
    outcomes = dict(item.recipients)
    for rcpt in item.envelope():
        outcomes.setdefault(rcpt, RecipientOutcome(state="accepted", message=note))
    done = await _move(
        store,
        item,
        item.status,
        OutboxStatus.SENT,
        note,
        resolution=how,
        recipients=outcomes,
        sent_at=item.sent_at or utcnow(),
        last_error=None,
    )
    if done is not None:
        await emit(redis, maxlen, done, note)
    return done


async def requeue(
    redis: Redis, maxlen: int, client: Client, store: Store, item: OutboxItem, note: str, *, automatic: bool
) -> OutboxItem | None:
    """AMBIGUOUS/FAILED -> QUEUED and a new delivery job (keyed apart from the earlier ones)."""
    resends = item.auto_resends + automatic
    done = await _move(
        store,
        item,
        item.status,
        OutboxStatus.QUEUED,
        note,
        auto_resends=resends,
        delivery_step=None,
        send_attempt=None,
        resolution=None,
    )
    if done is None:
        return None
    suffix = f":resend{resends}" if automatic else f":op{uuid.uuid4().hex[:12]}"
    job_id = await enqueue_send_job(client, done, suffix)
    await store.update_outbox(item.tenant_id, item.id, send_job_id=job_id)
    # the row as this decision left it: a fast worker may already have claimed the new job and moved it on
    done = done.model_copy(update={"send_job_id": job_id})
    await emit(redis, maxlen, done, note)
    return done


@job(queue="send-email", payload=ResolveSend, max_attempts=5)
async def resolve_ambiguous_send(ctx: JobContext, payload: ResolveSend) -> dict[str, Any]:
    """Settle an ambiguous send from the account's Sent folder (see the module docstring)."""
    store = get_store(ctx)
    item = await store.get_outbox(payload.tenant_id, payload.outbox_id)
    if item is None:
        raise PermanentError(f"outbox item {payload.outbox_id} not found")
    if item.status is not OutboxStatus.AMBIGUOUS:
        return {"status": item.status.value, "already": True}
    account = await store.get_account(item.tenant_id, item.account_id)
    if account is None:
        return await _needs_decision(ctx, store, item, "the account is gone; the Sent folder cannot be searched")
    try:
        async with account_imap(ctx, store, account) as session:  # password or OAuth2, as the account says
            folder = await find_sent_folder(session)
            if folder is None:
                return await _needs_decision(ctx, store, item, "the account has no Sent folder to search")
            await session.select(folder)
            await session.noop()
            if await in_folder(session, item.message_id):
                note = f"found in {folder!r} by its Message-ID"
                await settle_sent(ctx.redis, ctx.settings.events_maxlen, store, item, "sent_folder", note)
                return {"status": "sent", "resolution": "sent_folder", "folder": folder}
            grace_s = ctx.settings.send_ambiguous_grace_s
            probe = await _probe(store, item, utcnow() - timedelta(seconds=grace_s))
            files_sent = probe is not None and await in_folder(session, probe.message_id)
    except PermanentError as exc:  # login refused, account in auth_error, unusable IMAP settings
        return await _needs_decision(ctx, store, item, f"IMAP unusable ({exc})")
    except ImapError as exc:
        if ctx.attempt >= ctx.max_attempts:
            return await _needs_decision(ctx, store, item, f"the Sent folder could not be searched ({exc})")
        raise
    if probe is None and ctx.attempt < ctx.max_attempts:  # no evidence yet: look again when there may be some
        raise RetryLater("no earlier delivered message of this account to compare with yet", delay=grace_s * 2)
    if not files_sent:
        why = "no earlier delivered message to compare" if probe is None else f"{probe.message_id} is not there either"
        return await _needs_decision(
            ctx, store, item, f"not in {folder!r}, and this server is not known to file sent mail there ({why})"
        )
    if item.auto_resends >= 1:
        return await _needs_decision(ctx, store, item, f"not in {folder!r} after the automatic resend")
    note = f"not in {folder!r} (which holds the earlier {probe.message_id}): never delivered, resent once"  # type: ignore[union-attr]
    await requeue(ctx.redis, ctx.settings.events_maxlen, ctx.client, store, item, note, automatic=True)
    return {"status": "queued", "resolution": "resend", "folder": folder}


# -- the reaper --------------------------------------------------------------------------------------


class ReapOutbox(BaseModel):
    """Payload of the periodic reaper (nothing)."""


@job(queue="send-email", payload=ReapOutbox, max_attempts=1)
async def reap_outbox(ctx: JobContext, payload: ReapOutbox) -> dict[str, int]:
    """Give items whose delivery job died a final state: `sending` without progress for `send_stale_s`
    becomes `ambiguous` (the end of DATA was written) or `failed` (it was not: never delivered)."""
    store = get_store(ctx)
    cutoff = utcnow() - timedelta(seconds=ctx.settings.send_stale_s)
    failed = ambiguous = lookups = 0
    for item in await store.unfinished_outbox([OutboxStatus.SENDING, OutboxStatus.AMBIGUOUS], cutoff):
        if item.status is OutboxStatus.AMBIGUOUS:
            if item.resolution is None and not any("needs a decision" in e.note for e in item.history):
                await schedule_lookup(ctx.client, item, 0)  # the lookup may never have been enqueued
                lookups += 1
            continue
        state = (await ctx.client.status(item.send_job_id)).state if item.send_job_id else "not_found"
        if state in _LIVE_JOB:
            continue
        if item.delivery_step in (DeliveryStep.DATA_END, DeliveryStep.REPLIED):
            note = f"the delivery job ended ({state}) after the end of DATA was sent, before the reply was recorded"
            ambiguous += await mark_ambiguous(ctx, store, item, note) is not None
            continue
        note = f"the delivery job ended ({state}) at step {item.delivery_step or 'start'}: never handed over"
        done = await _move(
            store, item, OutboxStatus.SENDING, OutboxStatus.FAILED, note, at_step=True, same_step=True,
            last_error=note, resolution="reaper",
        )  # fmt: skip
        if done is not None:
            failed += 1
            await _emit(ctx, done, note)
    return {"failed": failed, "ambiguous": ambiguous, "lookups": lookups}


# -- an operator's decision ----------------------------------------------------------------------------


class DecisionError(ValueError):
    """The decision does not apply to the item's current state."""


async def decide(
    redis: Redis, maxlen: int, client: Client, store: Store, item: OutboxItem, action: Action, note: str = ""
) -> OutboxItem:
    """An operator settles an ambiguous item (or resends a failed one): mark sent, resend, or fail."""
    allowed = {OutboxStatus.AMBIGUOUS} | ({OutboxStatus.FAILED} if action == "resend" else set())
    if item.status not in allowed:
        raise DecisionError(f"cannot {action.replace('_', ' ')}: the message is {item.status.value}")
    text = f"operator: {action}" + (f" ({note})" if note else "")
    done: OutboxItem | None
    if action == "mark_sent":
        done = await settle_sent(redis, maxlen, store, item, "operator", text)
    elif action == "resend":
        done = await requeue(redis, maxlen, client, store, item, text, automatic=False)
    else:
        done = await _move(
            store, item, OutboxStatus.AMBIGUOUS, OutboxStatus.FAILED, text, resolution="operator", last_error=text
        )
        if done is not None:
            await emit(redis, maxlen, done, text)
    if done is None:
        raise DecisionError("the item changed meanwhile; reload it and decide again")
    return done
