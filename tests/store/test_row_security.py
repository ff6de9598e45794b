"""PostgreSQL row-level security: SQL that forgets its tenant filter still reaches only its own tenant's rows.

These connect as the application role (the tables' owner, not a superuser) with raw asyncpg, bypassing the
store's WHERE clauses entirely.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.store.conftest import store_settings
from tests.store.test_contract import account_in
from tests.support.imap import make_mail
from worker.mail.message import parse_message
from worker.store import OutboxIn, SqlStore
from worker.store.sql.tables import TENANT_TABLES


@pytest.fixture
async def seeded(pg_url: str) -> AsyncIterator[tuple[SqlStore, str]]:
    store = SqlStore.from_settings(store_settings(pg_url))
    acc = await store.create_account("t1", account_in())
    await store.create_outbox("t1", OutboxIn(account_id=acc.id, sender="a@example.com", to=["b@example.com"]))
    parsed = parse_message(make_mail(1))
    await store.insert_messages("t1", acc.id, "INBOX", 1, [(1, (), parsed)])
    await store.put_analysis("t1", parsed.content_id, {"category": "x"})
    await store.quarantine_message("t1", acc.id, "INBOX", 1, 2, error="e")
    yield store, acc.id
    await store.aclose()


async def _raw(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url.replace("postgresql://", "postgres://"))


async def test_rls_is_forced_and_the_role_cannot_bypass_it(pg_url: str, seeded: tuple[SqlStore, str]) -> None:
    conn = await _raw(pg_url)
    try:
        role = await conn.fetchrow("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        assert not role["rolsuper"] and not role["rolbypassrls"]
        flags = await conn.fetch(
            "SELECT relname, relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner) = current_user AS own "
            "FROM pg_class WHERE relname = ANY($1::text[])",
            list(TENANT_TABLES),
        )
        assert len(flags) == len(TENANT_TABLES)
        assert all(f["relrowsecurity"] and f["relforcerowsecurity"] and f["own"] for f in flags)
    finally:
        await conn.close()


async def test_a_forgotten_where_sees_and_changes_nothing_of_another_tenant(
    pg_url: str, seeded: tuple[SqlStore, str]
) -> None:
    store, account_id = seeded
    conn = await _raw(pg_url)
    try:
        for table in TENANT_TABLES:  # no tenant set: nothing at all
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
        async with conn.transaction():
            await conn.execute("SELECT set_config('worker.tenant_id', 't2', true)")
            for table in TENANT_TABLES:
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
            assert await conn.execute("UPDATE outbox SET status = 'sent'") == "UPDATE 0"
            assert await conn.execute("UPDATE accounts SET active = false") == "UPDATE 0"
            assert await conn.execute("DELETE FROM messages") == "DELETE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            async with conn.transaction():  # writing a row for another tenant is refused
                await conn.execute("SELECT set_config('worker.tenant_id', 't2', true)")
                await conn.execute(
                    "INSERT INTO analysis_requests (tenant_id, content_id, requested_at) VALUES ('t1', 'c', now())"
                )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            async with conn.transaction():  # nor can a row be moved to another tenant
                await conn.execute("SELECT set_config('worker.tenant_id', 't1', true)")
                await conn.execute("UPDATE accounts SET tenant_id = 't2'")
        async with conn.transaction():  # the cross-tenant scope reads accounts only, and writes nothing
            await conn.execute("SELECT set_config('worker.scope', 'all-read', true)")
            assert await conn.fetchval("SELECT count(*) FROM accounts") == 1
            assert await conn.fetchval("SELECT count(*) FROM messages") == 0
            assert await conn.execute("UPDATE accounts SET active = false") == "UPDATE 0"
        async with conn.transaction():  # its own tenant: everything
            await conn.execute("SELECT set_config('worker.tenant_id', 't1', true)")
            for table in ("accounts", "outbox", "messages", "analyses", "quarantine"):
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 1, table
    finally:
        await conn.close()
    account = await store.get_account("t1", account_id)
    assert account is not None and account.active  # nothing above changed it
