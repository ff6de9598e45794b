"""The schema as SQLAlchemy Core tables (the migrations create exactly this; a test compares them).

Every table carries `tenant_id` and leads its primary key and indexes with it: every read is tenant-scoped,
and on PostgreSQL row-level security checks it too (see `migrations/versions/0001_initial.py`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    literal_column,
)
from sqlalchemy.dialects.postgresql import JSONB

ID = String(64)
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both backends (SQLite keeps no zone: stored as UTC, read back as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware (UTC) datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Json: Any = JSON().with_variant(JSONB(), "postgresql")


def _tenant() -> Column[str]:
    return Column("tenant_id", ID, primary_key=True)


accounts = Table(
    "accounts",
    metadata,
    _tenant(),
    Column("id", ID, primary_key=True),
    Column("email", Text, nullable=False),
    Column("username", Text, nullable=False),
    Column("secret_enc", Text, nullable=False),
    Column("imap_host", Text, nullable=False),
    Column("imap_port", Integer, nullable=False),
    Column("imap_tls", String(16), nullable=False),
    Column("smtp_host", Text, nullable=False),
    Column("smtp_port", Integer, nullable=False),
    Column("smtp_tls", String(16), nullable=False),
    Column("mailboxes", Json, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("timeout_s", Float, nullable=False),
    Column("auth_type", String(16), nullable=False, server_default="password"),
    Column("auth_state", String(16), nullable=False, server_default="ok"),
    Column("auth_error", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index(None, "active", "tenant_id", "id"),
)

outbox = Table(
    "outbox",
    metadata,
    _tenant(),
    Column("id", ID, primary_key=True),
    Column("account_id", ID, nullable=False),
    Column("message_id", Text, nullable=False),
    Column("sender", Text, nullable=False),
    Column("sender_name", Text),
    Column("to", Json, nullable=False),
    Column("cc", Json, nullable=False),
    Column("bcc", Json, nullable=False),
    Column("subject", Text, nullable=False),
    Column("text", Text),
    Column("html", Text),
    Column("status", String(16), nullable=False),
    Column("recipients", Json, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("delivery_step", String(16)),
    Column("send_attempt", String(128)),
    Column("send_job_id", String(128)),
    Column("auto_resends", Integer, nullable=False),
    Column("resolution", String(32)),
    Column("history", Json, nullable=False),
    Column("last_error", Text),
    Column("scheduled_at", UtcDateTime),
    Column("scheduled_job_id", String(128)),
    Column("send_started_at", UtcDateTime),
    Column("lateness_s", Float),
    Column("sent_at", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index(None, "tenant_id", "status", "updated_at"),
    Index(None, "tenant_id", "message_id"),
    Index(None, "status", "updated_at"),  # the reaper's cross-tenant scan of unfinished items
)

messages = Table(
    "messages",
    metadata,
    _tenant(),
    Column("id", ID, primary_key=True),
    Column("account_id", ID, nullable=False),
    Column("mailbox", Text, nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("content_id", String(64), nullable=False),
    Column("message_id_header", Text),
    Column("subject", Text, nullable=False),
    Column("from_addr", Text, nullable=False),
    Column("to_addrs", Json, nullable=False),
    Column("cc_addrs", Json, nullable=False),
    Column("date", UtcDateTime),
    Column("sort_date", UtcDateTime, nullable=False),  # date, else stored_at: the listing's keyset (0002)
    Column("text", Text, nullable=False),
    Column("html", Text, nullable=False),
    Column("attachments", Json, nullable=False),
    Column("defects", Json, nullable=False),
    Column("headers", Json, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("flags", Json, nullable=False),
    Column("extra", Json, nullable=False),  # parser fields without a column of their own
    Column("stored_at", UtcDateTime, nullable=False),
    Column("removed_at", UtcDateTime),
    UniqueConstraint("tenant_id", "account_id", "mailbox", "uidvalidity", "uid"),
    Index(None, "tenant_id", "content_id"),
    # the message listing (newest first, keyset on (sort_date, id)): tenant-wide, per account, per mailbox
    Index(None, "tenant_id", "sort_date", "id"),
    Index(None, "tenant_id", "account_id", "sort_date", "id"),
    Index(None, "tenant_id", "account_id", "mailbox", "sort_date", "id"),
)


def search_document(subject: Any, body: Any) -> Any:
    """PostgreSQL's full-text document of a message: subject and text, 'simple' configuration (no stemming:
    mail comes in every language), the first SEARCH_CHARS characters (a tsvector is capped at 1 MB). The
    listing's WHERE uses this same expression, so the planner matches it to the GIN index."""
    doc = func.left(subject.op("||")(literal_column("' '")).op("||")(body), literal_column(str(SEARCH_CHARS)))
    return func.to_tsvector(literal_column("'simple'::regconfig"), doc)


SEARCH_CHARS = 100_000
messages.append_constraint(
    Index("ix_messages_search", search_document(messages.c.subject, messages.c.text), postgresql_using="gin").ddl_if(
        dialect="postgresql"
    )
)
# On SQLite, search is an FTS5 table filled by a trigger (migration 0002; SQLAlchemy has no FTS5 type, so
# it is not in this metadata and the schema comparison skips it, see `schema.include_name`). It keeps its own
# copy of subject and text next to the row's (tenant_id, id), so it does not depend on SQLite's rowids.
SQLITE_FTS = "messages_fts"

sync_state = Table(
    "sync_state",
    metadata,
    _tenant(),
    Column("account_id", ID, primary_key=True),
    Column("mailbox", Text, primary_key=True),
    Column("uidvalidity", BigInteger),
    Column("uidnext", BigInteger),
    Column("highest_uid", BigInteger, nullable=False),
    Column("highestmodseq", BigInteger),
    Column("flag_cursor", BigInteger, nullable=False),
    Column("last_sync_at", UtcDateTime),
)

analyses = Table(
    "analyses",
    metadata,
    _tenant(),
    Column("content_id", String(64), primary_key=True),
    Column("data", Json, nullable=False),
    Column("category", String(64)),
    Column("needs_reply", Boolean),
    Column("created_at", UtcDateTime, nullable=False),
    Index(None, "tenant_id", "category"),  # the listing's analysis filters (0002)
    Index(None, "tenant_id", "needs_reply"),
)

analysis_requests = Table(
    "analysis_requests",
    metadata,
    _tenant(),
    Column("content_id", String(64), primary_key=True),
    Column("requested_at", UtcDateTime, nullable=False),
)

quarantine = Table(
    "quarantine",
    metadata,
    _tenant(),
    Column("id", ID, primary_key=True),
    Column("account_id", ID, nullable=False),
    Column("mailbox", Text, nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("size", BigInteger),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("first_seen", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
    Column("resolved", Boolean, nullable=False),
    Column("resolved_at", UtcDateTime),
    UniqueConstraint("tenant_id", "account_id", "mailbox", "uidvalidity", "uid"),
    Index(None, "tenant_id", "resolved", "last_seen"),
)

oauth_grants = Table(
    "oauth_grants",
    metadata,
    _tenant(),
    Column("account_id", ID, primary_key=True),
    Column("config", Json, nullable=False),  # provider, client id, endpoints, scopes (no secrets)
    Column("refresh_enc", Text, nullable=False),
    Column("client_secret_enc", Text),
    Column("generation", Integer, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

TENANT_TABLES = (
    "accounts",
    "outbox",
    "messages",
    "sync_state",
    "analyses",
    "analysis_requests",
    "quarantine",
    "oauth_grants",
)
