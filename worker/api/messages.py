"""The message listing: a tenant's synced messages with filters, full-text search and cursor pagination.

`GET /v1/tenants/{t}/messages?account_id=&mailbox=&since=&until=&category=&needs_reply=&q=&limit=&cursor=`
returns `{"items": [...], "next_cursor": ...}`, newest first; pass `next_cursor` back as `cursor` (with the
same filters) for the next page. A cursor that was not made here is a 422. Rows carry headers, a snippet
and the analysis verdict; the whole message is `GET …/messages/{id}`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from worker.api.deps import Svc, Tenant
from worker.store import MessagePage, MessageQuery

router = APIRouter(prefix="/v1/tenants/{tenant_id}", tags=["mail"])


@router.get("/messages", response_model=MessagePage, summary="List and search the tenant's messages")
async def list_messages(tenant_id: Tenant, svc: Svc, query: Annotated[MessageQuery, Query()]) -> MessagePage:
    """Filters combine with AND (an account filter also finds the kept mail of a removed account); `q`
    matches messages whose subject or text has every word of it."""
    return await svc.store.list_messages(tenant_id, query)
