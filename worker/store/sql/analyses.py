"""Analyses, keyed by (tenant, content_id): copies of the same mail share one; and which were requested."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, select

from worker.store.models import check_id, utcnow
from worker.store.sql.base import SqlBase
from worker.store.sql.tables import analyses as t
from worker.store.sql.tables import analysis_requests as r
from worker.store.sql.text import clean_json


class AnalysesMixin(SqlBase):
    """Store methods on analyses."""

    async def analysis_requested(self, tenant_id: str, content_ids: Sequence[str]) -> list[bool]:
        """For each content id: was it already sent to analysis?"""
        if not content_ids:
            return []
        q = select(r.c.content_id).where(r.c.tenant_id == tenant_id, r.c.content_id.in_(list(content_ids)))
        async with self.tx(tenant_id, write=False) as conn:
            done = set((await conn.scalars(q)).all())
        return [c in done for c in content_ids]

    async def mark_analysis_requested(self, tenant_id: str, content_ids: Sequence[str]) -> list[bool]:
        """Mark contents as sent to analysis; True for each one not marked before (first occurrence only)."""
        if not content_ids:
            return []
        now = utcnow()
        unique = list(dict.fromkeys(content_ids))
        stmt = self.insert(r).on_conflict_do_nothing().returning(r.c.content_id)
        async with self.tx(tenant_id) as conn:
            added = set(
                (
                    await conn.scalars(
                        stmt, [{"tenant_id": tenant_id, "content_id": c, "requested_at": now} for c in unique]
                    )
                ).all()
            )
        out = []
        for c in content_ids:
            out.append(c in added)
            added.discard(c)
        return out

    async def put_analysis(self, tenant_id: str, content_id: str, data: dict[str, Any]) -> bool:
        """Store the analysis of a content identity; False (and kept) when one already exists."""
        data = clean_json(data)
        row = {
            "tenant_id": tenant_id,
            "content_id": check_id("content id", content_id),
            "data": data,
            "category": str(data["category"])[:64] if data.get("category") is not None else None,
            "needs_reply": bool(data["needs_reply"]) if data.get("needs_reply") is not None else None,
            "created_at": utcnow(),
        }
        stmt = self.insert(t).values(row).on_conflict_do_nothing().returning(t.c.content_id)
        async with self.tx(tenant_id) as conn:
            return (await conn.execute(stmt)).first() is not None

    async def get_analysis(self, tenant_id: str, content_id: str) -> dict[str, Any] | None:
        """The stored analysis, or None."""
        q = select(t.c.data).where(
            and_(t.c.tenant_id == tenant_id, t.c.content_id == check_id("content id", content_id))
        )
        async with self.tx(tenant_id, write=False) as conn:
            data = (await conn.execute(q)).scalar_one_or_none()
        return dict(data) if data is not None else None
