"""retry_quarantined: fetch a quarantined message again, parse and store it, and resolve it if that worked.

The operator's retry action (API, CLI, dashboard) after a fix (a raised size limit, a parser or store fix).
It uses the same path as a sync (parse pool, batch store, analysis once per content). A message that is no
longer on the server under the recorded UIDVALIDITY is resolved as gone: a UIDVALIDITY reset re-fetches
the whole mailbox anyway.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from worker.jobs.deps import get_store
from worker.jobs.email_sync import ANALYSIS_JOB, parse_pool
from worker.jobs.ingest import Location, ingest, request_analyses
from worker.jobs.mail_auth import account_imap
from worker.mail.spool import release
from worker.runtime import JobContext, PermanentError, job
from worker.store import InsertResult


class RetryQuarantined(BaseModel):
    """Payload: which quarantined message (IDs only)."""

    tenant_id: str
    quarantine_id: str


@job(queue="email-sync", payload=RetryQuarantined, max_attempts=3)
async def retry_quarantined(ctx: JobContext, payload: RetryQuarantined) -> dict[str, Any]:
    """Fetch the message again and store it; the result says whether it is resolved now."""
    store = get_store(ctx)
    q = await store.get_quarantined(payload.tenant_id, payload.quarantine_id)
    if q is None:
        raise PermanentError(f"quarantined message {payload.quarantine_id} not found")
    if q.resolved:
        return {"resolved": True, "outcome": "already resolved"}
    account = await store.get_account(payload.tenant_id, q.account_id)
    if account is None:
        raise PermanentError(f"account {q.account_id} not found")
    where = Location(payload.tenant_id, q.account_id, q.mailbox, q.uidvalidity)

    async def resolve(outcome: str) -> dict[str, Any]:
        await store.resolve_quarantined(payload.tenant_id, q.account_id, q.mailbox, q.uidvalidity, [q.uid])
        return {"resolved": True, "outcome": outcome}

    async def request(r: InsertResult) -> None:
        await ctx.enqueue(
            ANALYSIS_JOB,
            {"tenant_id": payload.tenant_id, "message_id": r.message_id},
            idempotency_key=f"analyse:{payload.tenant_id}:{r.content_id}",
        )

    async with account_imap(ctx, store, account) as session:
        status = await session.select(q.mailbox)
        if status.uidvalidity != q.uidvalidity:
            return await resolve("the mailbox's UIDVALIDITY changed: its resync fetches the message again")
        size = (await session.fetch_sizes([q.uid])).get(q.uid)
        if size is None:
            return await resolve("no longer on the server")
        limit = ctx.settings.sync_max_message_bytes
        if size > limit:
            await where.quarantine(store, q.uid, size, f"too large: {size} bytes > {limit}")
            return {"resolved": False, "error": f"too large: {size} bytes > {limit}"}
        fetched = await session.fetch_messages([q.uid], size, ctx.settings.sync_spool_bytes)
    if not fetched:
        return await resolve("no longer on the server")
    try:
        done = await ingest(store, parse_pool(ctx.settings.parse_workers, ctx.settings.parse_nice), where, fetched)
    finally:
        release(m.body for m in fetched)
    if done.quarantined:
        again = await store.get_quarantined(payload.tenant_id, payload.quarantine_id)
        return {"resolved": False, "error": again.error if again else "quarantined again"}
    analyses = await request_analyses(store, payload.tenant_id, done.results, request)
    result = await resolve("stored")
    return result | {"message_id": done.results[0].message_id, "analyses_requested": analyses}
