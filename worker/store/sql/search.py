"""The message listing: filters, keyset pagination on (sort_date, id), and full-text search.

Search is "every word, anywhere in subject or text": PostgreSQL matches `plainto_tsquery('simple', q)`
against the GIN-indexed tsvector expression of `tables.search_document`; SQLite matches each word as a quoted
FTS5 string in `messages_fts`. Both tokenize on word boundaries without stemming (SQLite also folds
diacritics). Results keep the listing's order (newest first), not a relevance rank.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import and_, column, false, func, literal, literal_column, select, table, tuple_

from worker.store.listing import MessagePage, MessageQuery, MessageSummary, decode_cursor, encode_cursor
from worker.store.sql.base import SqlBase
from worker.store.sql.tables import SQLITE_FTS, search_document
from worker.store.sql.tables import analyses as a
from worker.store.sql.tables import messages as t
from worker.store.sql.text import clean

SNIPPET_CHARS = 200
_fts = table(SQLITE_FTS, column("tenant_id"), column("id"))
_SPACE = re.compile(r"\s+")


def fts5_query(words: str) -> str:
    """User text as an FTS5 query: every whitespace-separated word a quoted string (so no operator or column
    syntax is ever interpreted), all required."""
    return " ".join('"' + w.replace('"', '""') + '"' for w in words.split())


class SearchMixin(SqlBase):
    """Store method listing and searching a tenant's messages."""

    async def list_messages(self, tenant_id: str, query: MessageQuery) -> MessagePage:
        """A page of the tenant's messages matching `query`, newest first (see `worker.store.listing`)."""
        joined = t.outerjoin(a, and_(a.c.tenant_id == t.c.tenant_id, a.c.content_id == t.c.content_id))
        q = (
            select(
                t.c.id,
                t.c.account_id,
                t.c.mailbox,
                t.c.uid,
                t.c.subject,
                t.c.from_addr,
                t.c.to_addrs,
                t.c.date,
                t.c.sort_date,
                func.substr(t.c.text, 1, SNIPPET_CHARS).label("snippet"),
                t.c.size,
                t.c.attachments,
                t.c.flags,
                t.c.removed_at,
                a.c.category,
                a.c.needs_reply,
            )
            .select_from(joined)
            .where(t.c.tenant_id == tenant_id, *self._filters(tenant_id, query))
            .order_by(t.c.sort_date.desc(), t.c.id.desc())
            .limit(query.limit + 1)
        )
        async with self.tx(tenant_id, write=False) as conn:
            rows = (await conn.execute(q)).all()
        items = [_summary(r) for r in rows[: query.limit]]
        more = len(rows) > query.limit
        return MessagePage(items=items, next_cursor=encode_cursor(items[-1].sort_date, items[-1].id) if more else None)

    def _filters(self, tenant_id: str, query: MessageQuery) -> list[Any]:
        where: list[Any] = []
        if query.account_id is not None:
            where.append(t.c.account_id == query.account_id)
        if query.mailbox is not None:
            where.append(t.c.mailbox == clean(query.mailbox))
        if query.since is not None:
            where.append(t.c.sort_date >= query.since)
        if query.until is not None:
            where.append(t.c.sort_date < query.until)
        if query.category is not None:
            where.append(a.c.category == clean(query.category))
        if query.needs_reply is not None:
            where.append(a.c.needs_reply.is_(query.needs_reply))
        if not query.include_removed:
            where.append(t.c.removed_at.is_(None))
        if query.cursor is not None:
            when, last = decode_cursor(query.cursor)
            where.append(
                tuple_(t.c.sort_date, t.c.id) < tuple_(literal(when, t.c.sort_date.type), literal(last, t.c.id.type))
            )
        if query.q is not None:
            where.append(self._matches(tenant_id, clean(query.q)))
        return where

    def _matches(self, tenant_id: str, words: str) -> Any:
        if self.dialect == "postgresql":
            tsquery = func.plainto_tsquery(literal_column("'simple'::regconfig"), words)
            return search_document(t.c.subject, t.c.text).op("@@")(tsquery)
        match = fts5_query(words)
        if not match:
            return false()  # no word at all: nothing matches (as on PostgreSQL)
        hits = select(_fts.c.id).where(_fts.c.tenant_id == tenant_id, literal_column(SQLITE_FTS).op("MATCH")(match))
        return t.c.id.in_(hits)


def _summary(row: Any) -> MessageSummary:
    return MessageSummary(
        id=row.id,
        account_id=row.account_id,
        mailbox=row.mailbox,
        uid=row.uid,
        subject=row.subject,
        sender=row.from_addr,
        to=list(row.to_addrs),
        date=row.date,
        sort_date=row.sort_date,
        snippet=_SPACE.sub(" ", row.snippet or "").strip(),
        size=row.size,
        attachments=len(row.attachments or ()),
        flags=list(row.flags),
        category=row.category,
        needs_reply=row.needs_reply,
        removed=row.removed_at is not None,
    )
