"""Watch routes: the watched mailboxes of a tenant (its own only), and the operator's fleet-wide view."""

from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import BaseModel

from worker.api.deps import Admin, Svc, Tenant
from worker.watch.view import WatchOut, WatchSummary, list_watches, summary

router = APIRouter(tags=["watches"])


class FleetWatches(BaseModel):
    """Every watched mailbox, and the fleet's totals."""

    summary: WatchSummary
    watches: list[WatchOut]


@router.get("/v1/tenants/{tenant_id}/watches", response_model=list[WatchOut], summary="The tenant's watched mailboxes")
async def tenant_watches(tenant_id: Tenant, svc: Svc, limit: int = Query(1000, ge=1, le=10_000)) -> list[WatchOut]:
    """Per mailbox: state (connected, backing_off, auth_error...), owner process, connected since, last event,
    last error."""
    return await list_watches(svc.redis, tenant_id, limit)


@router.get("/v1/watches", response_model=FleetWatches, summary="Every watched mailboxes (admin)")
async def all_watches(svc: Svc, _: Admin, limit: int = Query(1000, ge=1, le=10_000)) -> FleetWatches:
    return FleetWatches(summary=await summary(svc.redis), watches=await list_watches(svc.redis, None, limit))
