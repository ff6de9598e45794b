"""Initial schema: accounts, outbox, messages (one row per server location), sync state, analyses, analysis
requests, quarantine; on PostgreSQL, row-level security on every table.

Revision ID: 0001
Revises:
Create Date: 2026-12-01 20:41:22.582883
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
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
TENANT = "current_setting('worker.tenant_id', true)"
revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("secret_enc", sa.Text(), nullable=False),
        sa.Column("imap_host", sa.Text(), nullable=False),
        sa.Column("imap_port", sa.Integer(), nullable=False),
        sa.Column("imap_tls", sa.String(length=16), nullable=False),
        sa.Column("smtp_host", sa.Text(), nullable=False),
        sa.Column("smtp_port", sa.Integer(), nullable=False),
        sa.Column("smtp_tls", sa.String(length=16), nullable=False),
        sa.Column("mailboxes", JSON, nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("auth_type", sa.String(length=16), server_default="password", nullable=False),
        sa.Column("auth_state", sa.String(length=16), server_default="ok", nullable=False),
        sa.Column("auth_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_accounts")),
    )
    op.create_index(op.f("ix_accounts_active_tenant_id_id"), "accounts", ["active", "tenant_id", "id"], unique=False)

    op.create_table(
        "analyses",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("content_id", sa.String(length=64), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("category", sa.String(length=64), nullable=True),
        sa.Column("needs_reply", sa.Boolean(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "content_id", name=op.f("pk_analyses")),
    )
    op.create_table(
        "analysis_requests",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("content_id", sa.String(length=64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "content_id", name=op.f("pk_analysis_requests")),
    )
    op.create_table(
        "messages",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("mailbox", sa.Text(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("content_id", sa.String(length=64), nullable=False),
        sa.Column("message_id_header", sa.Text(), nullable=True),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("from_addr", sa.Text(), nullable=False),
        sa.Column("to_addrs", JSON, nullable=False),
        sa.Column("cc_addrs", JSON, nullable=False),
        sa.Column("date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("attachments", JSON, nullable=False),
        sa.Column("defects", JSON, nullable=False),
        sa.Column("headers", JSON, nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("flags", JSON, nullable=False),
        sa.Column("extra", JSON, nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_messages")),
        sa.UniqueConstraint(
            "tenant_id",
            "account_id",
            "mailbox",
            "uidvalidity",
            "uid",
            name=op.f("uq_messages_tenant_id_account_id_mailbox_uidvalidity_uid"),
        ),
    )
    op.create_index(
        op.f("ix_messages_tenant_id_account_id_date_id"),
        "messages",
        ["tenant_id", "account_id", "date", "id"],
        unique=False,
    )
    op.create_index(op.f("ix_messages_tenant_id_content_id"), "messages", ["tenant_id", "content_id"], unique=False)
    op.create_index(op.f("ix_messages_tenant_id_date_id"), "messages", ["tenant_id", "date", "id"], unique=False)

    op.create_table(
        "outbox",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("sender_name", sa.Text(), nullable=True),
        sa.Column("to", JSON, nullable=False),
        sa.Column("cc", JSON, nullable=False),
        sa.Column("bcc", JSON, nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("recipients", JSON, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("delivery_step", sa.String(length=16), nullable=True),
        sa.Column("send_attempt", sa.String(length=128), nullable=True),
        sa.Column("send_job_id", sa.String(length=128), nullable=True),
        sa.Column("auto_resends", sa.Integer(), nullable=False),
        sa.Column("resolution", sa.String(length=32), nullable=True),
        sa.Column("history", JSON, nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("scheduled_job_id", sa.String(length=128), nullable=True),
        sa.Column("send_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lateness_s", sa.Float(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_outbox")),
    )
    op.create_index(op.f("ix_outbox_tenant_id_message_id"), "outbox", ["tenant_id", "message_id"], unique=False)
    op.create_index(op.f("ix_outbox_status_updated_at"), "outbox", ["status", "updated_at"], unique=False)
    op.create_index(
        op.f("ix_outbox_tenant_id_status_updated_at"), "outbox", ["tenant_id", "status", "updated_at"], unique=False
    )

    op.create_table(
        "quarantine",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("mailbox", sa.Text(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved", sa.Boolean(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_quarantine")),
        sa.UniqueConstraint(
            "tenant_id",
            "account_id",
            "mailbox",
            "uidvalidity",
            "uid",
            name=op.f("uq_quarantine_tenant_id_account_id_mailbox_uidvalidity_uid"),
        ),
    )
    op.create_index(
        op.f("ix_quarantine_tenant_id_resolved_last_seen"),
        "quarantine",
        ["tenant_id", "resolved", "last_seen"],
        unique=False,
    )

    op.create_table(
        "sync_state",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("mailbox", sa.Text(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=True),
        sa.Column("uidnext", sa.BigInteger(), nullable=True),
        sa.Column("highest_uid", sa.BigInteger(), nullable=False),
        sa.Column("highestmodseq", sa.BigInteger(), nullable=True),
        sa.Column("flag_cursor", sa.BigInteger(), nullable=False),
        sa.Column("last_sync_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "account_id", "mailbox", name=op.f("pk_sync_state")),
    )
    op.create_table(
        "oauth_grants",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("refresh_enc", sa.Text(), nullable=False),
        sa.Column("client_secret_enc", sa.Text(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "account_id", name=op.f("pk_oauth_grants")),
    )
    if op.get_bind().dialect.name == "postgresql":
        row_level_security()


def row_level_security() -> None:
    """Every row is visible and writable only in a transaction whose `worker.tenant_id` is its tenant (set by
    the store per transaction). FORCE makes it bind the table owner too; superusers and BYPASSRLS roles still
    bypass it, so the application's role must be neither. The only cross-tenant access is reading accounts in
    the explicit 'all-read' scope (the periodic sync lists active accounts; key rotation lists tenants) and
    reading outbox items in it (the reaper finds sends left unfinished by any tenant's crashed workers)."""
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} USING (tenant_id = {TENANT}) WITH CHECK (tenant_id = {TENANT})"
        )
    for table in ("accounts", "outbox"):
        op.execute(
            f"CREATE POLICY cross_tenant_read ON {table} FOR SELECT "
            "USING (current_setting('worker.scope', true) = 'all-read')"
        )


def downgrade() -> None:
    op.drop_table("oauth_grants")
    op.drop_table("sync_state")
    op.drop_index(op.f("ix_quarantine_tenant_id_resolved_last_seen"), table_name="quarantine")

    op.drop_table("quarantine")
    op.drop_index(op.f("ix_outbox_tenant_id_status_updated_at"), table_name="outbox")
    op.drop_index(op.f("ix_outbox_status_updated_at"), table_name="outbox")
    op.drop_index(op.f("ix_outbox_tenant_id_message_id"), table_name="outbox")

    op.drop_table("outbox")
    op.drop_index(op.f("ix_messages_tenant_id_date_id"), table_name="messages")
    op.drop_index(op.f("ix_messages_tenant_id_content_id"), table_name="messages")
    op.drop_index(op.f("ix_messages_tenant_id_account_id_date_id"), table_name="messages")

    op.drop_table("messages")
    op.drop_table("analysis_requests")
    op.drop_table("analyses")
    op.drop_index(op.f("ix_accounts_active_tenant_id_id"), table_name="accounts")

    op.drop_table("accounts")
