"""Synced messages (one row per server location), their flags and expunges, and the sync position.

A location is (tenant, account, mailbox, UIDVALIDITY, UID), unique; inserts are `ON CONFLICT DO NOTHING`, so
a crashed and re-run sync, or two syncs of the same mailbox at once, never duplicate a row. An expunged
message (or one of a replaced UIDVALIDITY) keeps its row with `removed_at` set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, select, update

from worker.mail.message import ParsedMessage
from worker.store.models import InsertResult, StoredMessage, SyncState, check_id, utcnow
from worker.store.sql.base import SqlBase
from worker.store.sql.tables import messages as t
from worker.store.sql.tables import sync_state as s
from worker.store.sql.text import clean, clean_json

# ParsedMessage field -> column (fields not listed go to the `extra` JSON column)
_COLUMNS = {
    "message_id_header": "message_id_header",
    "subject": "subject",
    "from_": "from_addr",
    "to": "to_addrs",
    "cc": "cc_addrs",
    "date": "date",
    "text": "text",
    "html": "html",
    "attachments": "attachments",
    "defects": "defects",
    "headers": "headers",
    "size": "size",
    "content_id": "content_id",
}


def location_id(tenant_id: str, account_id: str, mailbox: str, uidvalidity: int, uid: int) -> str:
    """The store id of a message location: stable, so a re-run insert names the same row."""
    key = f"{tenant_id}\0{account_id}\0{mailbox}\0{uidvalidity}\0{uid}"
    return "m" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _row(parsed: ParsedMessage, now: datetime) -> dict[str, Any]:
    doc = parsed.model_dump(mode="json")
    row: dict[str, Any] = {col: clean_json(doc.pop(field)) for field, col in _COLUMNS.items()}
    date = parsed.date
    row["date"] = date.replace(tzinfo=UTC) if date is not None and date.tzinfo is None else date
    row["sort_date"] = row["date"] or now  # the listing's order: the message's date, else when it was stored
    row["extra"] = clean_json(doc)
    return row


def _parsed(row: Any) -> ParsedMessage:
    m = row._mapping
    doc = {field: m[col] for field, col in _COLUMNS.items()} | dict(m["extra"] or {})
    return ParsedMessage.model_validate(doc)


class MessagesMixin(SqlBase):
    """Store methods on synced messages and sync state."""

    @staticmethod
    def _box(tenant_id: str, account_id: str, mailbox: str, uidvalidity: int) -> Any:
        return and_(
            t.c.tenant_id == tenant_id,
            t.c.account_id == check_id("account id", account_id),
            t.c.mailbox == clean(mailbox),
            t.c.uidvalidity == uidvalidity,
        )

    async def insert_messages(
        self,
        tenant_id: str,
        account_id: str,
        mailbox: str,
        uidvalidity: int,
        items: Sequence[tuple[int, tuple[str, ...], ParsedMessage]],
    ) -> list[InsertResult]:
        """Store each (uid, flags, parsed) once per location, in one transaction; idempotent."""
        if not items:
            return []
        check_id("account id", account_id)
        mailbox = clean(mailbox)
        now = utcnow()
        rows = [
            _row(parsed, now)
            | {
                "tenant_id": tenant_id,
                "id": location_id(tenant_id, account_id, mailbox, uidvalidity, uid),
                "account_id": account_id,
                "mailbox": mailbox,
                "uidvalidity": uidvalidity,
                "uid": uid,
                "flags": clean_json(list(flags)),
                "stored_at": now,
                "removed_at": None,
            }
            for uid, flags, parsed in items
        ]
        content_ids = sorted({r["content_id"] for r in rows})
        # No conflict target: the id is a function of the location, so a concurrent insert of the same location
        # collides on the primary key as well as on the location's unique index, and a target naming only one
        # would let PostgreSQL raise on the other (seen under load: UniqueViolationError on pk_messages).
        stmt = self.insert(t).on_conflict_do_nothing().returning(t.c.id)
        async with self.tx(tenant_id) as conn:
            known_q = select(t.c.content_id).where(
                t.c.tenant_id == tenant_id, t.c.account_id == account_id, t.c.content_id.in_(content_ids)
            )
            known = set((await conn.scalars(known_q)).all())
            created = set((await conn.scalars(stmt, rows)).all())
        out: list[InsertResult] = []
        for row in rows:
            new = row["content_id"] not in known
            known.add(row["content_id"])
            out.append(InsertResult(int(row["uid"]), row["id"], row["content_id"], new, row["id"] in created))
        return out

    async def get_message(self, tenant_id: str, message_id: str) -> StoredMessage | None:
        """A synced message by its store id, or None."""
        key = and_(t.c.tenant_id == tenant_id, t.c.id == check_id("message id", message_id))
        async with self.tx(tenant_id, write=False) as conn:
            row = (await conn.execute(select(t).where(key))).first()
        return self._message(row) if row is not None else None

    @staticmethod
    def _message(row: Any) -> StoredMessage:
        m = row._mapping
        return StoredMessage(
            id=m["id"],
            tenant_id=m["tenant_id"],
            account_id=m["account_id"],
            mailbox=m["mailbox"],
            uidvalidity=m["uidvalidity"],
            uid=m["uid"],
            content_id=m["content_id"],
            parsed=_parsed(row),
            flags=tuple(m["flags"]),
            stored_at=m["stored_at"],
            removed_at=m["removed_at"],
        )

    async def count_messages(self, tenant_id: str, account_id: str) -> int:
        """How many messages the account has on the server (stored locations not expunged)."""
        q = select(func.count()).where(
            t.c.tenant_id == tenant_id, t.c.account_id == check_id("account id", account_id), t.c.removed_at.is_(None)
        )
        async with self.tx(tenant_id, write=False) as conn:
            return int((await conn.execute(q)).scalar_one())

    async def known_uids(self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int) -> list[int]:
        """UIDs stored (and not expunged) for the mailbox under this UIDVALIDITY, ascending."""
        q = (
            select(t.c.uid)
            .where(self._box(tenant_id, account_id, mailbox, uidvalidity), t.c.removed_at.is_(None))
            .order_by(t.c.uid)
        )
        async with self.tx(tenant_id, write=False) as conn:
            return [int(u) for u in await conn.scalars(q)]

    async def get_flags(
        self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int, uids: Sequence[int]
    ) -> dict[int, tuple[str, ...]]:
        """Stored flags of the given UIDs (absent UIDs are left out)."""
        if not uids:
            return {}
        q = select(t.c.uid, t.c.flags).where(
            self._box(tenant_id, account_id, mailbox, uidvalidity), t.c.removed_at.is_(None), t.c.uid.in_(list(uids))
        )
        async with self.tx(tenant_id, write=False) as conn:
            return {int(r.uid): tuple(r.flags) for r in await conn.execute(q)}

    async def set_flags(
        self,
        tenant_id: str,
        account_id: str,
        mailbox: str,
        uidvalidity: int,
        flags: dict[int, tuple[str, ...]],
    ) -> None:
        """Record new flags of known UIDs (unknown UIDs are ignored)."""
        if not flags:
            return
        stmt = (
            update(t)
            .where(
                self._box(tenant_id, account_id, mailbox, uidvalidity),
                t.c.removed_at.is_(None),
                t.c.uid == bindparam("b_uid"),
            )
            .values(flags=bindparam("b_flags"))
        )
        params = [{"b_uid": uid, "b_flags": clean_json(list(f))} for uid, f in flags.items()]
        async with self.tx(tenant_id) as conn:
            await conn.execute(stmt, params)

    async def expunge_uids(
        self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int, uids: Sequence[int]
    ) -> int:
        """Mark UIDs the server expunged as removed (the rows stay); returns how many were known."""
        if not uids:
            return 0
        stmt = (
            update(t)
            .where(
                self._box(tenant_id, account_id, mailbox, uidvalidity),
                t.c.removed_at.is_(None),
                t.c.uid.in_(list(uids)),
            )
            .values(removed_at=utcnow())
        )
        async with self.tx(tenant_id) as conn:
            return int((await conn.execute(stmt)).rowcount)

    async def reset_mailbox(self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int) -> None:
        """Retire every location of an old UIDVALIDITY (rows stay; their content is recognised by content_id)."""
        stmt = (
            update(t)
            .where(self._box(tenant_id, account_id, mailbox, uidvalidity), t.c.removed_at.is_(None))
            .values(removed_at=utcnow())
        )
        async with self.tx(tenant_id) as conn:
            await conn.execute(stmt)

    # -- sync position ----------------------------------------------------------------------------

    @staticmethod
    def _state_key(tenant_id: str, account_id: str, mailbox: str) -> Any:
        return and_(
            s.c.tenant_id == tenant_id,
            s.c.account_id == check_id("account id", account_id),
            s.c.mailbox == clean(mailbox),
        )

    async def get_sync_state(self, tenant_id: str, account_id: str, mailbox: str) -> SyncState:
        """The sync position (a fresh one when the mailbox was never synced)."""
        q = select(s).where(self._state_key(tenant_id, account_id, mailbox))
        async with self.tx(tenant_id, write=False) as conn:
            row = (await conn.execute(q)).first()
        return SyncState.model_validate(dict(row._mapping)) if row is not None else SyncState()

    async def put_sync_state(self, tenant_id: str, account_id: str, mailbox: str, state: SyncState) -> None:
        """Commit the sync position (call only after the messages it covers are stored)."""
        values = state.model_dump()
        key = {"tenant_id": tenant_id, "account_id": check_id("account id", account_id), "mailbox": clean(mailbox)}
        stmt = self.insert(s).values(key | values)
        stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=values)
        async with self.tx(tenant_id) as conn:
            await conn.execute(stmt)
