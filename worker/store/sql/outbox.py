"""Outbox items: status moves are compare-and-set (one conditional UPDATE ... RETURNING), never read-modify-write."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import and_, select, update

from worker.mail.message import check_header, new_message_id, validate_address, validate_addresses
from worker.store.models import STORED, OutboxIn, OutboxItem, OutboxStatus, check_id, utcnow
from worker.store.sql.base import SqlBase
from worker.store.sql.tables import outbox as t

_FIXED = {"id", "tenant_id", "message_id", "created_at", "updated_at", "status"}
_JSON = {"to", "cc", "bcc", "recipients", "history"}
_ADAPTERS = {
    name: TypeAdapter[Any](field.annotation)  # type: ignore[arg-type]
    for name, field in OutboxItem.model_fields.items()
    if name not in _FIXED
}


def _values(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Column values for `fields`, each validated like the model validates it (addresses strictly)."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        adapter = _ADAPTERS.get(name)
        if adapter is None:
            raise ValueError(f"outbox field {name!r} cannot be updated")
        value = adapter.validate_python(value)
        if name == "sender":
            value = validate_address(value)
        elif name in ("to", "cc", "bcc"):
            value = validate_addresses(value)
        elif name in ("subject", "sender_name") and value is not None:
            value = check_header(name, value)
        out[name] = adapter.dump_python(value, mode="json" if name in _JSON else "python")
    return out


def _item(row: Any) -> OutboxItem:
    return OutboxItem.model_validate(dict(row._mapping), context=STORED)


def _outbox_key(tenant_id: str, outbox_id: str) -> Any:
    return and_(t.c.tenant_id == tenant_id, t.c.id == check_id("outbox id", outbox_id))


class OutboxMixin(SqlBase):
    """Store methods on outbox items."""

    async def create_outbox(self, tenant_id: str, data: OutboxIn) -> OutboxItem:
        """Store a queued outbox item with its Message-ID, created here once."""
        check_id("account id", data.account_id)
        now = utcnow()
        item = OutboxItem(
            **data.model_dump(),
            id="o" + uuid.uuid4().hex[:20],
            tenant_id=tenant_id,
            message_id=new_message_id(data.sender),
            created_at=now,
            updated_at=now,
        )
        row = item.model_dump(mode="python", exclude=_JSON) | item.model_dump(mode="json", include=_JSON)
        async with self.tx(tenant_id) as conn:
            await conn.execute(t.insert().values(row))
        return item

    async def get_outbox(self, tenant_id: str, outbox_id: str) -> OutboxItem | None:
        """The outbox item, or None."""
        key = _outbox_key(tenant_id, outbox_id)
        async with self.tx(tenant_id, write=False) as conn:
            row = (await conn.execute(select(t).where(key))).first()
        return _item(row) if row is not None else None

    async def transition_outbox(
        self,
        tenant_id: str,
        outbox_id: str,
        expect: Iterable[OutboxStatus],
        to: OutboxStatus,
        *,
        match: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> OutboxItem | None:
        """Atomically move the status from one of `expect` to `to` (and set `fields`) when every `match` field
        equals its value; None otherwise (or when absent). One conditional UPDATE: concurrent callers cannot
        both win."""
        allowed = [OutboxStatus(s).value for s in expect]
        values = _values(fields) | {"status": OutboxStatus(to).value, "updated_at": utcnow()}
        where = [_outbox_key(tenant_id, outbox_id), t.c.status.in_(allowed)]
        for name, value in _values(match or {}).items():
            if name in _JSON:
                raise ValueError(f"cannot match on outbox field {name!r}")
            where.append(t.c[name].is_(None) if value is None else t.c[name] == value)
        stmt = update(t).where(*where).values(values).returning(*t.c)
        async with self.tx(tenant_id) as conn:
            row = (await conn.execute(stmt)).first()
        return _item(row) if row is not None else None

    async def update_outbox(self, tenant_id: str, outbox_id: str, **fields: Any) -> OutboxItem:
        """Set fields (not the status: use transition_outbox) atomically; KeyError if absent."""
        if "status" in fields:
            raise ValueError("use transition_outbox to change the status")
        values = _values(fields) | {"updated_at": utcnow()}
        stmt = update(t).where(_outbox_key(tenant_id, outbox_id)).values(values).returning(*t.c)
        async with self.tx(tenant_id) as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            raise KeyError(outbox_id)
        return _item(row)

    async def list_outbox(
        self,
        tenant_id: str,
        *,
        status: OutboxStatus | None = None,
        account_id: str | None = None,
        limit: int = 100,
    ) -> list[OutboxItem]:
        """The tenant's outbox items, newest first (filtered by status and account)."""
        q = select(t).where(t.c.tenant_id == tenant_id)
        if status is not None:
            q = q.where(t.c.status == OutboxStatus(status).value)
        if account_id is not None:
            q = q.where(t.c.account_id == check_id("account id", account_id))
        q = q.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(max(1, min(limit, 1000)))
        async with self.tx(tenant_id, write=False) as conn:
            return [_item(r) for r in await conn.execute(q)]

    async def find_outbox_by_message_id(self, tenant_id: str, message_id: str) -> OutboxItem | None:
        """The outbox item sent with this Message-ID (as written, angle brackets included), or None."""
        q = select(t).where(t.c.tenant_id == tenant_id, t.c.message_id == message_id).limit(1)
        async with self.tx(tenant_id, write=False) as conn:
            row = (await conn.execute(q)).first()
        return _item(row) if row is not None else None

    async def unfinished_outbox(
        self, statuses: Iterable[OutboxStatus], updated_before: datetime, limit: int = 500
    ) -> list[OutboxItem]:
        """Items of any tenant in one of `statuses` not updated since `updated_before`, oldest first (for the
        reaper; a cross-tenant read, which row-level security allows on the outbox in the 'all-read' scope)."""
        wanted = [OutboxStatus(s).value for s in statuses]
        q = (
            select(t)
            .where(t.c.status.in_(wanted), t.c.updated_at < updated_before)
            .order_by(t.c.updated_at, t.c.tenant_id, t.c.id)
            .limit(max(1, min(limit, 5000)))
        )
        async with self.tx(None, write=False, scope="all-read") as conn:
            return [_item(r) for r in await conn.execute(q)]
