"""Engines for the two backends: URL resolution, pool sizing from settings, SQLite pragmas and locking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def default_sqlite_path(settings: Settings) -> Path:
    """The embedded database file used when DATABASE_URL is unset."""
    return Path(settings.data_dir).expanduser() / "worker.db"


def database_url(settings: Settings) -> URL:
    """DATABASE_URL with its async driver (asyncpg / aiosqlite), or the embedded SQLite file."""
    raw = settings.database_url
    if not raw:
        return make_url(f"sqlite+aiosqlite:///{default_sqlite_path(settings).resolve()}")
    url = make_url(raw.replace("postgres://", "postgresql://", 1) if raw.startswith("postgres://") else raw)
    backend = url.get_backend_name()
    if backend == "postgresql":
        return url.set(drivername="postgresql+asyncpg")
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    raise ValueError(f"DATABASE_URL: unsupported database {backend!r} (use postgresql:// or sqlite:///)")


def is_embedded(settings: Settings) -> bool:
    """True when the store runs on the default SQLite file (no DATABASE_URL)."""
    return not settings.database_url


def create_engine(settings: Settings, url: URL | None = None) -> AsyncEngine:
    """An async engine for the URL; the pool is sized from settings (PostgreSQL) and closed by `dispose()`."""
    url = url or database_url(settings)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return create_async_engine(
        url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout_s,
        pool_pre_ping=True,
        connect_args={"timeout": settings.database_pool_timeout_s, "command_timeout": 60},
    )


def _sqlite_engine(url: URL) -> AsyncEngine:
    """SQLite in WAL mode; a write transaction starts with BEGIN IMMEDIATE, so concurrent writers (other
    processes too) wait on the busy timeout instead of failing on a lock upgrade."""
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
            "foreign_keys=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("write", True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
