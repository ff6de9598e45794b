"""What every part of the SQL store shares: the engine, tenant-scoped transactions, outage handling."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from worker.runtime.errors import Defer
from worker.store.crypto import SecretBox
from worker.store.models import check_id

log = logging.getLogger("worker.store")
_SET_TENANT = text("SELECT set_config('worker.tenant_id', :tenant, true), set_config('worker.scope', :scope, true)")
OUTAGE_BACKOFF_CAP_S = 30.0


class StoreUnavailable(Defer):
    """The database cannot be reached (down, restarting, pool exhausted, locked): the job runs again after a
    backoff without consuming an attempt, so an outage never dead-letters work. The API answers 503."""


def is_outage(exc: BaseException, dialect: str) -> bool:
    """True for connection-level failures (as opposed to a bad query or a constraint)."""
    if isinstance(exc, PoolTimeout | OSError | TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, InterfaceError):
            return True
        if dialect == "sqlite":
            return isinstance(exc, OperationalError) and any(
                w in str(exc.orig) for w in ("locked", "busy", "unable to open", "disk I/O")
            )
        return isinstance(exc, OperationalError) or isinstance(exc.orig, OSError | ConnectionError)
    return False


class SqlBase:
    """The engine plus the transaction helper every table module uses."""

    def __init__(self, engine: AsyncEngine, box: SecretBox) -> None:
        self.engine = engine
        self.box = box
        self.dialect = engine.dialect.name
        self._outages = 0
        self._last_outage_log = 0.0

    def __repr__(self) -> str:
        return f"SqlStore({self.dialect})"

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    def insert(self, table: Table) -> Any:
        """The dialect's INSERT (with ON CONFLICT support)."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    @contextlib.asynccontextmanager
    async def tx(
        self, tenant_id: str | None, *, write: bool = True, scope: str = "tenant"
    ) -> AsyncIterator[AsyncConnection]:
        """One transaction scoped to a tenant. On PostgreSQL the tenant is set for row-level security, so a
        query that forgets its `WHERE tenant_id` still sees and changes only this tenant's rows. `tenant_id`
        None is only for the few cross-tenant reads (scope 'all-read'), which RLS allows on accounts only."""
        if tenant_id is not None:
            check_id("tenant id", tenant_id)
        try:
            async with self.engine.connect() as conn:
                if self.dialect == "sqlite":
                    await conn.execution_options(write=write)
                async with conn.begin():
                    if self.dialect == "postgresql":
                        await conn.execute(_SET_TENANT, {"tenant": tenant_id or "", "scope": scope})
                    yield conn
        except Exception as exc:
            if is_outage(exc, self.dialect):
                raise self._unavailable(exc) from exc
            raise
        self._outages = 0

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        self._outages += 1
        delay = min(OUTAGE_BACKOFF_CAP_S, 0.5 * 2 ** min(self._outages - 1, 10)) * random.uniform(0.8, 1.2)
        now = time.monotonic()
        if now - self._last_outage_log > 5:
            self._last_outage_log = now
            log.warning("database unavailable (%s); jobs wait %.1fs and run again", type(exc).__name__, delay)
        return StoreUnavailable(f"database unavailable: {type(exc).__name__}: {exc}"[:300], delay=delay)
