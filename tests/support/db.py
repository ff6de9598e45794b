"""Test databases: a throwaway PostgreSQL cluster per test process with a migrated database owned by a
non-superuser role (so row-level security binds it), and a migrated SQLite file copied per test."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from pydantic import SecretStr

from settings import Settings
from worker.devstack import PostgresServer
from worker.store import SqlStore
from worker.store.sql.engine import create_engine
from worker.store.sql.schema import upgrade
from worker.store.sql.tables import TENANT_TABLES

APP_ROLE = "worker"


async def migrate(url: str) -> None:
    """Bring the database at `url` to head."""
    engine = create_engine(Settings(database_url=url, secret_key=SecretStr("x")))
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def create_database(server: PostgresServer, name: str, *, migrated: bool = True) -> str:
    """A new database owned by the application role (created if needed); returns its URL."""
    conn = await asyncpg.connect(server.url().replace("postgresql://", "postgres://"))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_ROLE):
            await conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS")
        await conn.execute(f'CREATE DATABASE "{name}" OWNER {APP_ROLE}')
    finally:
        await conn.close()
    url = server.url(name, user=APP_ROLE)
    if migrated:
        await migrate(url)
    return url


async def truncate(url: str) -> None:
    """Empty every table (TRUNCATE is not subject to row-level security)."""
    conn = await asyncpg.connect(url.replace("postgresql://", "postgres://"))
    try:
        await conn.execute(f"TRUNCATE {', '.join(TENANT_TABLES)}")
    finally:
        await conn.close()


def sqlite_template(directory: Path) -> Path:
    """A migrated SQLite database file to copy from."""
    path = directory / "template.db"
    asyncio.run(migrate(f"sqlite:///{path}"))
    return path


def sqlite_copy(template: Path, directory: Path) -> str:
    path = directory / "worker.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@contextlib.asynccontextmanager
async def scratch_store(settings: Settings) -> AsyncIterator[tuple[Settings, SqlStore]]:
    """`settings` pointed at a fresh, migrated SQLite file (removed afterwards), and a store on it."""
    directory = tempfile.mkdtemp(prefix="worker-store-")
    url = f"sqlite:///{directory}/store.db"
    try:
        await migrate(url)
        scratch = settings.model_copy(update={"database_url": url})
        store = SqlStore.from_settings(scratch)
        try:
            yield scratch, store
        finally:
            await store.aclose()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
