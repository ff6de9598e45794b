"""Outbox items: status moves are compare-and-set (one conditional UPDATE ... RETURNING), never read-modify-write."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import and_, select, update

from worker.mail.message import check_header, new_message_id, validate_address, validate_addresses
from worker.store.models import STORED, OutboxIn, OutboxItem, OutboxStatus, RecipientOutcome, check_id, utcnow
from worker.store.sql.base import SqlBase
from worker.store.sql.tables import outbox as t

_FIXED = {"id", "tenant_id", "message_id", "created_at", "updated_at", "status"}
_ADAPTERS = {
    name: TypeAdapter[Any](field.annotation)  # type: ignore[arg-type]
    for name, field in OutboxItem.model_fields.items()
    if name not in _FIXED and name != "recipients"
}
_RECIPIENTS = TypeAdapter(dict[str, RecipientOutcome])


def _values(fields: dict[str, Any]) -> dict[str, Any]:
    """Column values for `fields`, each validated like the model validates it (addresses strictly)."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "recipients":
            out[name] = {k: v.model_dump() for k, v in _RECIPIENTS.validate_python(value).items()}
            continue
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
        out[name] = value.value if isinstance(value, OutboxStatus) else value
    return out


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
        row = item.model_dump(mode="python") | {"status": item.status.value, "recipients": {}}
        async with self.tx(tenant_id) as conn:
            await conn.execute(t.insert().values(row))
        return item

    async def get_outbox(self, tenant_id: str, outbox_id: str) -> OutboxItem | None:
        """The outbox item, or None."""
        key = _outbox_key(tenant_id, outbox_id)
        async with self.tx(tenant_id, write=False) as conn:
            row = (await conn.execute(select(t).where(key))).first()
        return OutboxItem.model_validate(dict(row._mapping), context=STORED) if row is not None else None

    async def transition_outbox(
        self, tenant_id: str, outbox_id: str, expect: Iterable[OutboxStatus], to: OutboxStatus, **fields: Any
    ) -> OutboxItem | None:
        """Atomically move the status from one of `expect` to `to` (and set `fields`); None if it was not in
        one of them (or does not exist). One conditional UPDATE: concurrent callers cannot both win."""
        allowed = [OutboxStatus(s).value for s in expect]
        values = _values(fields) | {"status": OutboxStatus(to).value, "updated_at": utcnow()}
        stmt = (
            update(t).where(_outbox_key(tenant_id, outbox_id), t.c.status.in_(allowed)).values(values).returning(*t.c)
        )
        async with self.tx(tenant_id) as conn:
            row = (await conn.execute(stmt)).first()
        return OutboxItem.model_validate(dict(row._mapping), context=STORED) if row is not None else None

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
        return OutboxItem.model_validate(dict(row._mapping), context=STORED)
