"""Outbox routes: list a tenant's outbox, the ambiguous sends waiting for a decision (admin, all tenants),
and an operator's decision on one of them (mark sent, resend, fail)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field

from worker.api.deps import Admin, Svc, Tenant
from worker.api.mail import OutboxOut, _outbox
from worker.jobs.delivery import DecisionError, decide
from worker.store import OutboxStatus, utcnow

router = APIRouter(prefix="/v1/tenants/{tenant_id}", tags=["mail"])
admin = APIRouter(prefix="/v1/outbox", tags=["mail"])


@router.get("/outbox", response_model=list[OutboxOut], summary="The tenant's outbox, newest first")
async def list_outbox(
    tenant_id: Tenant,
    svc: Svc,
    status_: Annotated[OutboxStatus | None, Query(alias="status")] = None,
    account_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[OutboxOut]:
    items = await svc.store.list_outbox(tenant_id, status=status_, account_id=account_id, limit=limit)
    return [OutboxOut.of(i) for i in items]


class Decision(BaseModel):
    """What to do with an ambiguous send: `mark_sent` (it was delivered), `resend` (it was not; also for a
    failed item), or `fail` (give up)."""

    action: Literal["mark_sent", "resend", "fail"]
    note: str = Field("", max_length=500, description="why (kept in the item's history)")


@router.post(
    "/outbox/{outbox_id}/resolve", response_model=OutboxOut, summary="Decide an ambiguous send (or resend a failed one)"
)
async def resolve(tenant_id: Tenant, outbox_id: str, body: Decision, svc: Svc) -> OutboxOut:
    item = await _outbox(svc, tenant_id, outbox_id)
    try:
        done = await decide(
            svc.redis, svc.settings.events_maxlen, svc.client, svc.store, item, body.action, body.note.strip()
        )
    except DecisionError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return OutboxOut.of(done)


class PendingDecision(OutboxOut):
    tenant_id: str


@admin.get("/ambiguous", response_model=list[PendingDecision], summary="Ambiguous sends of every tenant")
async def ambiguous(svc: Svc, _: Admin, limit: Annotated[int, Query(ge=1, le=500)] = 200) -> list[PendingDecision]:
    items = await svc.store.unfinished_outbox([OutboxStatus.AMBIGUOUS], utcnow(), limit)
    return [PendingDecision.model_validate(OutboxOut.of(i).model_dump() | {"tenant_id": i.tenant_id}) for i in items]
