"""`worker db upgrade|downgrade|current` and `worker secrets rotate`, and the store check `worker run` and
`worker api` make before starting. Failures are one line (`error: ...`), exit 1."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI registers these commands on every start: SQLAlchemy is imported only to run one
    from settings import Settings
    from worker.store.sql import SqlStore


class StoreCommandError(Exception):
    """A one-line failure of a store command."""


@asynccontextmanager
async def opened_store(settings: Settings | None = None) -> AsyncIterator[SqlStore]:
    """The store for one CLI command (from the current settings unless given), closed afterwards."""
    from settings import get_settings
    from worker.store import open_store

    store = open_store(settings or get_settings())
    try:
        yield store
    finally:
        await store.aclose()


def where(settings: Settings) -> str:
    """The database, without credentials."""
    from worker.store.sql.engine import database_url

    return database_url(settings).render_as_string(hide_password=True)


def check_secret(settings: Settings) -> None:
    """The worker and the API refuse the development SECRET_KEY unless ALLOW_DEV_SECRET is set."""
    from settings import dev_secret_refusal

    refusal = dev_secret_refusal(settings)
    if refusal is not None:
        raise StoreCommandError(refusal)


async def check_store(settings: Settings) -> str:
    """The startup check: schema at head (an empty embedded database is created). Raises StoreCommandError."""
    from sqlalchemy.exc import SQLAlchemyError

    from worker.store.sql.engine import create_engine, is_embedded
    from worker.store.sql.schema import SchemaOutdated, check_schema

    try:
        engine = create_engine(settings)
    except ValueError as exc:
        raise StoreCommandError(str(exc)) from None
    try:
        return await check_schema(engine, create_if_empty=is_embedded(settings))
    except SchemaOutdated as exc:
        raise StoreCommandError(str(exc)) from None
    except (OSError, TimeoutError) as exc:
        raise StoreCommandError(f"cannot reach the database {where(settings)}: {exc}") from None
    except SQLAlchemyError as exc:
        message = f"database {where(settings)}: {type(exc).__name__}: {exc}".splitlines()[0]
        raise StoreCommandError(message) from None
    finally:
        await engine.dispose()


async def _db(args: argparse.Namespace) -> int:
    from settings import get_settings
    from worker.store.sql.engine import create_engine
    from worker.store.sql.schema import current, downgrade, head, upgrade

    settings = get_settings()
    engine = create_engine(settings)
    try:
        if args.db_command == "upgrade":
            await upgrade(engine, args.revision)
        elif args.db_command == "downgrade":
            await downgrade(engine, args.revision)
        rev = await current(engine)
        print(f"{where(settings)}: schema {rev or 'empty'} (code head {head()})")
        return 0
    finally:
        await engine.dispose()


async def _secrets(args: argparse.Namespace) -> int:
    from settings import get_settings
    from worker.store.sql import SqlStore

    settings = get_settings()
    await check_store(settings)
    store = SqlStore.from_settings(settings)
    try:
        n = await store.rotate_secrets()
    finally:
        await store.aclose()
    print(f"re-encrypted {n} account secret(s) with the first SECRET_KEY")
    return 0


def _command(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return int(asyncio.run(fn(args)))
        except (StoreCommandError, ValueError) as exc:
            raise SystemExit(f"error: {exc}") from None
        except (OSError, SQLAlchemyError) as exc:
            raise SystemExit(f"error: database: {type(exc).__name__}: {exc}".splitlines()[0]) from None

    return run


def add_parsers(sub: Any) -> None:
    """Register `db` and `secrets` on the CLI's subparsers."""
    db = sub.add_parser("db", help="database schema: upgrade, downgrade, current")
    dsub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = dsub.add_parser("upgrade", help="migrate to the newest schema (or REVISION)")
    up.add_argument("revision", nargs="?", default="head")
    down = dsub.add_parser("downgrade", help="migrate down to REVISION ('base' empties the database)")
    down.add_argument("revision")
    dsub.add_parser("current", help="the database's schema revision and the code's")
    db.set_defaults(func=_command(_db))

    secrets = sub.add_parser("secrets", help="stored account secrets: rotate")
    ssub = secrets.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")
    ssub.add_parser("rotate", help="re-encrypt every stored secret with the first key of SECRET_KEY")
    secrets.set_defaults(func=_command(_secrets))
