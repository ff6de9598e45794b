"""Quarantined messages: what could not be parsed or stored, with enough to fetch it again."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, select, update

from worker.store.models import Quarantined, check_id, utcnow
from worker.store.sql.base import SqlBase
from worker.store.sql.tables import quarantine as t
from worker.store.sql.text import clean

LOCATION = ("tenant_id", "account_id", "mailbox", "uidvalidity", "uid")


class QuarantineMixin(SqlBase):
    """Store methods on quarantined messages."""

    async def quarantine_message(
        self,
        tenant_id: str,
        account_id: str,
        mailbox: str,
        uidvalidity: int,
        uid: int,
        *,
        error: str,
        size: int | None = None,
    ) -> Quarantined:
        """Record (or, seen again, count another attempt of) a message that failed; it is unresolved again."""
        now = utcnow()
        key = {
            "tenant_id": tenant_id,
            "account_id": check_id("account id", account_id),
            "mailbox": clean(mailbox),
            "uidvalidity": uidvalidity,
            "uid": uid,
        }
        error = clean(error)[:2000]
        row = key | {
            "id": "q" + uuid.uuid4().hex[:20],
            "size": size,
            "error": error,
            "attempts": 1,
            "first_seen": now,
            "last_seen": now,
            "resolved": False,
            "resolved_at": None,
        }
        stmt = self.insert(t).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(LOCATION),
            set_={
                "attempts": t.c.attempts + 1,
                "error": error,
                "size": size,
                "last_seen": now,
                "resolved": False,
                "resolved_at": None,
            },
        ).returning(*t.c)
        async with self.tx(tenant_id) as conn:
            got = (await conn.execute(stmt)).one()
        return Quarantined.model_validate(dict(got._mapping))

    async def get_quarantined(self, tenant_id: str, quarantine_id: str) -> Quarantined | None:
        """One quarantined record, or None."""
        q = select(t).where(and_(t.c.tenant_id == tenant_id, t.c.id == check_id("quarantine id", quarantine_id)))
        async with self.tx(tenant_id, write=False) as conn:
            row = (await conn.execute(q)).first()
        return Quarantined.model_validate(dict(row._mapping)) if row is not None else None

    async def list_quarantined(
        self,
        tenant_id: str,
        account_id: str | None = None,
        *,
        mailbox: str | None = None,
        include_resolved: bool = False,
        limit: int = 100,
    ) -> list[Quarantined]:
        """The tenant's quarantined messages (unresolved unless asked), most recently seen first."""
        q = select(t).where(t.c.tenant_id == tenant_id)
        if account_id is not None:
            q = q.where(t.c.account_id == check_id("account id", account_id))
        if mailbox is not None:
            q = q.where(t.c.mailbox == clean(mailbox))
        if not include_resolved:
            q = q.where(t.c.resolved.is_(False))
        q = q.order_by(t.c.last_seen.desc(), t.c.id).limit(max(1, min(limit, 1000)))
        async with self.tx(tenant_id, write=False) as conn:
            return [Quarantined.model_validate(dict(r._mapping)) for r in await conn.execute(q)]

    async def resolve_quarantined(
        self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int, uids: Sequence[int]
    ) -> int:
        """Mark the records of these locations resolved (stored after all, or given up); returns how many."""
        if not uids:
            return 0
        where: Any = and_(
            t.c.tenant_id == tenant_id,
            t.c.account_id == check_id("account id", account_id),
            t.c.mailbox == clean(mailbox),
            t.c.uidvalidity == uidvalidity,
            t.c.uid.in_(list(uids)),
            t.c.resolved.is_(False),
        )
        stmt = update(t).where(where).values(resolved=True, resolved_at=utcnow())
        async with self.tx(tenant_id) as conn:
            return int((await conn.execute(stmt)).rowcount)
