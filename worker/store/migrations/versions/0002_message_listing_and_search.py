"""Message listing and search: `messages.sort_date` (date, else stored_at) with keyset indexes for the listing,
indexes on the analysis filters, and full-text search over subject and text (PostgreSQL: a GIN index on a
tsvector expression; SQLite: an FTS5 table kept by triggers).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 00:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# frozen copies of what tables.py says today (a migration never imports the code's schema)
SEARCH_DOCUMENT = "to_tsvector('simple'::regconfig, left(subject || ' ' || text, 100000))"
FTS_CREATE = (
    "CREATE VIRTUAL TABLE messages_fts USING fts5("
    "subject, text, tenant_id UNINDEXED, id UNINDEXED, tokenize = 'unicode61 remove_diacritics 2')"
)
FTS_TRIGGERS = (
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN "
    "INSERT INTO messages_fts (subject, text, tenant_id, id) VALUES (new.subject, new.text, new.tenant_id, new.id); "
    "END",
    "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN "
    "DELETE FROM messages_fts WHERE tenant_id = old.tenant_id AND id = old.id; "
    "END",
)
LISTING = (
    ("ix_messages_tenant_id_sort_date_id", ["tenant_id", "sort_date", "id"]),
    ("ix_messages_tenant_id_account_id_sort_date_id", ["tenant_id", "account_id", "sort_date", "id"]),
    (
        "ix_messages_tenant_id_account_id_mailbox_sort_date_id",
        ["tenant_id", "account_id", "mailbox", "sort_date", "id"],
    ),
)
OLD = (
    ("ix_messages_tenant_id_account_id_date_id", ["tenant_id", "account_id", "date", "id"]),
    ("ix_messages_tenant_id_date_id", ["tenant_id", "date", "id"]),
)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.add_column("messages", sa.Column("sort_date", sa.DateTime(timezone=True), nullable=True))
    # The backfill must see every tenant's rows: row-level security (FORCEd, binding the owner who runs the
    # migrations) is lifted for the owner inside this transaction only.
    if not sqlite:
        op.execute("ALTER TABLE messages NO FORCE ROW LEVEL SECURITY")
    op.execute("UPDATE messages SET sort_date = COALESCE(date, stored_at)")
    if not sqlite:
        op.execute("ALTER TABLE messages FORCE ROW LEVEL SECURITY")
    with op.batch_alter_table("messages") as batch:
        batch.alter_column("sort_date", existing_type=sa.DateTime(timezone=True), nullable=False)
        for name, _ in OLD:
            batch.drop_index(name)
    for name, cols in LISTING:
        op.create_index(name, "messages", cols, unique=False)
    op.create_index("ix_analyses_tenant_id_category", "analyses", ["tenant_id", "category"], unique=False)
    op.create_index("ix_analyses_tenant_id_needs_reply", "analyses", ["tenant_id", "needs_reply"], unique=False)
    if sqlite:
        op.execute(FTS_CREATE)
        for trigger in FTS_TRIGGERS:
            op.execute(trigger)
        op.execute(
            "INSERT INTO messages_fts (subject, text, tenant_id, id) SELECT subject, text, tenant_id, id FROM messages"
        )
    else:
        op.execute(f"CREATE INDEX ix_messages_search ON messages USING gin ({SEARCH_DOCUMENT})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER messages_fts_delete")
        op.execute("DROP TRIGGER messages_fts_insert")
        op.execute("DROP TABLE messages_fts")
    else:
        op.drop_index("ix_messages_search", table_name="messages")
    op.drop_index("ix_analyses_tenant_id_needs_reply", table_name="analyses")
    op.drop_index("ix_analyses_tenant_id_category", table_name="analyses")
    for name, _ in LISTING:
        op.drop_index(name, table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("sort_date")
    for name, cols in OLD:
        op.create_index(name, "messages", cols, unique=False)
