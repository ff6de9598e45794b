"""Alembic environment: migrations run on the connection `worker.store.sql.schema` hands over."""

from __future__ import annotations

from alembic import context

from worker.store.sql.schema import include_name
from worker.store.sql.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `worker db upgrade` (worker.store.sql.schema), not the alembic CLI")
context.configure(
    connection=connection,
    target_metadata=metadata,
    include_name=include_name,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
