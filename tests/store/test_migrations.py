"""Migrations on both backends: empty -> head equals the code's schema, downgrade/upgrade round trip, the
startup check and the `worker db` commands."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydantic import SecretStr
from sqlalchemy import Connection, inspect

from settings import Settings
from tests.store.conftest import store_settings
from tests.support import db
from worker.devstack import PostgresServer
from worker.store import SchemaOutdated, SqlStore, prepare_store
from worker.store.sql.engine import create_engine
from worker.store.sql.schema import current, downgrade, head, include_name, upgrade
from worker.store.sql.tables import TENANT_TABLES, metadata

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/empty.db"
    server: PostgresServer = request.getfixturevalue("postgres")
    return await db.create_database(server, "m" + uuid.uuid4().hex[:12], migrated=False)


def _diff(conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn, opts={"include_name": include_name}), metadata))


def _tables(conn: Connection) -> set[str]:
    return {t for t in inspect(conn).get_table_names() if include_name(t, "table", {})} - {"alembic_version"}


async def test_empty_to_head_matches_the_code_then_round_trips(empty_url: str) -> None:
    engine = create_engine(store_settings(empty_url))
    try:
        assert await current(engine) is None
        await upgrade(engine)
        assert await current(engine) == head()
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == set(TENANT_TABLES)
            assert await conn.run_sync(_diff) == []  # the migrations build exactly tables.py
        await downgrade(engine, "base")
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()
        assert await current(engine) is None
        await upgrade(engine)
        assert await current(engine) == head()
    finally:
        await engine.dispose()
    store = await prepare_store(store_settings(empty_url))
    try:
        acc = await store.create_account("t1", _account())
        assert (await store.get_account("t1", acc.id)) == acc
    finally:
        await store.aclose()


def _account() -> Any:
    from tests.store.test_contract import account_in

    return account_in()


async def test_startup_refuses_an_old_schema_and_creates_an_empty_embedded_one(empty_url: str, tmp_path: Path) -> None:
    with pytest.raises(SchemaOutdated, match=r"schema is empty, this code needs \w+: run `worker db upgrade`"):
        await prepare_store(store_settings(empty_url))
    embedded = Settings(data_dir=str(tmp_path / "data"), secret_key=SecretStr("k"))  # no DATABASE_URL
    store = await prepare_store(embedded)
    try:
        assert (tmp_path / "data" / "worker.db").exists()
        assert await current(store.engine) == head()
    finally:
        await store.aclose()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=ROOT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_db_commands_and_the_worker_refusing_to_start(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/w.db", "SECRET_KEY": "test"}
    run = _cli("run", env=env)
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1] == (
        f"error: database schema is empty, this code needs {head()}: run `worker db upgrade`"
    )
    assert "Traceback" not in run.stderr
    assert _cli("db", "current", env=env).stdout.strip().endswith(f"schema empty (code head {head()})")
    up = _cli("db", "upgrade", env=env)
    assert up.returncode == 0 and up.stdout.strip().endswith(f"schema {head()} (code head {head()})"), up.stderr
    assert _cli("db", "current", env=env).stdout.strip().endswith(f"schema {head()} (code head {head()})")
    down = _cli("db", "downgrade", "base", env=env)
    assert down.returncode == 0 and "schema empty" in down.stdout
    bad = _cli("db", "current", env={"DATABASE_URL": "mysql://x@127.0.0.1/db"})
    assert bad.returncode == 1 and "unsupported database 'mysql'" in bad.stderr and "Traceback" not in bad.stderr


async def test_store_works_after_round_trip_on_shared_template(sqlite_url: str) -> None:
    store = SqlStore.from_settings(store_settings(sqlite_url))
    try:
        assert await current(store.engine) == head()
    finally:
        await store.aclose()


async def test_0002_upgrades_existing_messages(backend_url: str) -> None:
    """Messages stored before 0002 get their sort date (date, else stored_at) and become searchable."""
    from tests.store.test_listing import mail, store_mails
    from worker.store import MessageQuery

    store = SqlStore.from_settings(store_settings(backend_url))
    try:
        acc = await store.create_account("t1", _account())
        dated, undated = await store_mails(
            store,
            "t1",
            acc.id,
            "INBOX",
            [mail(1, subject="quarterly report"), mail(2).model_copy(update={"date": None})],
        )
        await downgrade(store.engine, "0001")
        await upgrade(store.engine)
        page = await store.list_messages("t1", MessageQuery())
        assert [m.id for m in page.items] == [undated, dated]
        undated_msg = await store.get_message("t1", undated)
        assert undated_msg is not None and page.items[0].sort_date == undated_msg.stored_at
        found = await store.list_messages("t1", MessageQuery(q="quarterly"))
        assert [m.id for m in found.items] == [dated]
    finally:
        await store.aclose()
