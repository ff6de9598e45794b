"""Schema management with the Alembic migrations shipped in `worker/store/migrations`.

`upgrade` / `downgrade` / `current` back `worker db upgrade|downgrade|current`; `check_schema` is what the
worker and the API run at start: an embedded SQLite database that is still empty is created at head, any other
database older than the code is refused with a one-line message naming the command that fixes it.
"""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.store.sql.tables import SQLITE_FTS


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """For schema comparison (autogenerate, the migration test): SQLite's FTS5 search table and its shadow
    tables are made by migration 0002 and are not in the metadata (SQLAlchemy has no FTS5 type)."""
    return not (type_ == "table" and name is not None and name.startswith(SQLITE_FTS))


class SchemaOutdated(RuntimeError):
    """The database schema is not the one this code needs."""


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "worker.store:migrations")
    return cfg


def head() -> str:
    """The newest revision the code knows."""
    rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert rev is not None
    return rev


def _run(conn: Connection, action: str, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    getattr(command, action)(cfg, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate up to `revision` (default: the newest)."""
    async with engine.begin() as conn:
        await conn.run_sync(_run, "upgrade", revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Migrate down to `revision` ('base' = empty)."""
    async with engine.begin() as conn:
        await conn.run_sync(_run, "downgrade", revision)


def _current(conn: Connection) -> tuple[str | None, bool]:
    empty = not [t for t in inspect(conn).get_table_names() if t != "alembic_version" and include_name(t, "table", {})]
    return MigrationContext.configure(conn).get_current_revision(), empty


async def current(engine: AsyncEngine) -> str | None:
    """The database's revision (None when never migrated)."""
    async with engine.connect() as conn:
        rev, _ = await conn.run_sync(_current)
    return rev


async def check_schema(engine: AsyncEngine, *, create_if_empty: bool) -> str:
    """Make sure the database is at head; returns the revision. Raises SchemaOutdated with the fix."""
    async with engine.connect() as conn:
        rev, empty = await conn.run_sync(_current)
    want = head()
    if rev == want:
        return rev
    if rev is None and empty and create_if_empty:
        await upgrade(engine)
        return want
    known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if rev is not None and rev not in known:
        raise SchemaOutdated(
            f"database schema {rev} is newer than this code ({want}): upgrade the worker, or run "
            f"`worker db downgrade {want}` with the newer code"
        )
    raise SchemaOutdated(f"database schema is {rev or 'empty'}, this code needs {want}: run `worker db upgrade`")


def describe(engine: AsyncEngine) -> dict[str, Any]:
    """Where the store is, without credentials (for messages)."""
    url = engine.url
    return {"backend": url.get_backend_name(), "database": url.database, "host": url.host, "port": url.port}
