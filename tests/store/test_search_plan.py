"""PostgreSQL's full-text index under row-level security: the planner may use an index for the application
role's (RLS-bound) query only when every function of the predicate is LEAKPROOF. The built-in text-search
functions are not, so the GIN index serves the store's search only after a superuser marks the four that
the predicate uses (README: The store). Both halves are checked on the plan of the exact query the store runs."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from sqlalchemy import event

from tests.store.conftest import store_settings
from tests.store.test_contract import account_in
from tests.store.test_listing import mail, store_mails
from tests.support import db
from worker.devstack import PostgresServer
from worker.store import MessageQuery, SqlStore

LEAKPROOF = (
    "ts_match_vq(tsvector, tsquery)",
    "to_tsvector(regconfig, text)",
    '"left"(text, integer)',
    "textcat(text, text)",
)


async def _plan(store: SqlStore, conn: asyncpg.Connection) -> str:
    seen: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: Any) -> None:
        seen.append((statement, params))

    event.listen(store.engine.sync_engine, "before_cursor_execute", capture)
    try:
        await store.list_messages("t1", MessageQuery(q="message 17"))
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", capture)
    [(statement, params)] = [s for s in seen if "plainto_tsquery" in s[0]]
    rows = await conn.fetch("EXPLAIN " + statement, *params)
    return "\n".join(r[0] for r in rows)


async def test_the_gin_index_needs_leakproof_text_search_functions(postgres: PostgresServer) -> None:
    name = "s" + uuid.uuid4().hex[:12]
    url = await db.create_database(postgres, name)
    store = SqlStore.from_settings(store_settings(url))
    app = await asyncpg.connect(url.replace("postgresql://", "postgres://"))
    admin = await asyncpg.connect(postgres.url(name).replace("postgresql://", "postgres://"))
    try:
        account = await store.create_account("t1", account_in())
        await store_mails(store, "t1", account.id, "INBOX", [mail(i) for i in range(300)])
        await admin.execute("ANALYZE messages")
        await app.execute("SELECT set_config('worker.tenant_id', 't1', false)")
        await app.execute("SET enable_seqscan = off")  # make the index the cheapest path whenever it is allowed
        await app.execute("SET enable_indexscan = off")
        assert "ix_messages_search" not in await _plan(store, app)  # RLS: the predicate is not leakproof
        for function in LEAKPROOF:
            await admin.execute(f"ALTER FUNCTION {function} LEAKPROOF")  # per database, as a superuser
        assert "Bitmap Index Scan on ix_messages_search" in await _plan(store, app)
        found = await store.list_messages("t1", MessageQuery(q="message 17"))
        assert [m.subject for m in found.items] == ["message 17"]
    finally:
        await app.close()
        await admin.close()
        await store.aclose()
