"""The email data store: accounts, outbox, synced messages, sync state, analyses and quarantine, per tenant.

Job payloads carry IDs only; everything else lives here, in SQL (PostgreSQL in production, an embedded SQLite
file by default). Every method takes the tenant id; on PostgreSQL row-level security enforces it as well.
Account secrets are encrypted with AES-GCM (`crypto.SecretBox`, tenant and account bound in as associated
data) and are only ever handed out as SecretStr. Redis keeps no mail data, only coordination (`locks`).

- `models`: the records and their validation.       - `protocol`: the `Store` protocol.
- `listing`: the message listing's query, rows and cursor.
- `crypto`: encryption of secrets at rest, rotation. - `locks`: per-tenant leases in Redis.
- `sql`: the SQL backend and its migrations (`worker/store/migrations`).
"""

from __future__ import annotations

from settings import Settings
from worker.store.crypto import SecretBox
from worker.store.listing import BadCursor, MessagePage, MessageQuery, MessageSummary
from worker.store.locks import Locks
from worker.store.models import (
    FINAL_STATUSES,
    STORED,
    Account,
    AccountIn,
    DeliveryStep,
    InsertResult,
    OutboxEvent,
    OutboxIn,
    OutboxItem,
    OutboxStatus,
    Quarantined,
    RecipientOutcome,
    StoredMessage,
    SyncState,
    check_id,
    mailbox_key,
    utcnow,
)
from worker.store.protocol import Store
from worker.store.sql import SqlStore, StoreUnavailable
from worker.store.sql.engine import is_embedded
from worker.store.sql.schema import SchemaOutdated, check_schema


def open_store(settings: Settings) -> SqlStore:
    """The store `settings` describe (DATABASE_URL, else the embedded SQLite file); close it with `aclose()`.
    Opening does not touch the database; `prepare_store` checks its schema."""
    return SqlStore.from_settings(settings)


async def prepare_store(settings: Settings) -> SqlStore:
    """`open_store` plus the startup check: an empty embedded database is created, any database whose schema
    is not the code's raises SchemaOutdated (one line, naming `worker db upgrade`)."""
    store = open_store(settings)
    try:
        await check_schema(store.engine, create_if_empty=is_embedded(settings))
    except BaseException:
        await store.aclose()
        raise
    return store


__all__ = [
    "FINAL_STATUSES",
    "STORED",
    "Account",
    "AccountIn",
    "BadCursor",
    "DeliveryStep",
    "InsertResult",
    "Locks",
    "MessagePage",
    "MessageQuery",
    "MessageSummary",
    "OutboxEvent",
    "OutboxIn",
    "OutboxItem",
    "OutboxStatus",
    "Quarantined",
    "RecipientOutcome",
    "SchemaOutdated",
    "SecretBox",
    "SqlStore",
    "Store",
    "StoreUnavailable",
    "StoredMessage",
    "SyncState",
    "check_id",
    "mailbox_key",
    "open_store",
    "prepare_store",
    "utcnow",
]
