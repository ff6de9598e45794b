"""The SQL implementation of `Store` on SQLAlchemy 2 Core (asyncio): PostgreSQL via asyncpg, SQLite via aiosqlite.

- `engine`: URLs, pools, SQLite pragmas.   - `tables`: the schema.   - `base`: transactions, RLS scope, outages.
- `accounts`, `outbox`, `messages`, `analyses`, `quarantine`: the methods, one module per table group;
  `search`: the message listing and full-text search.
- `schema`: Alembic migrations (upgrade, current, the startup check).
"""

from __future__ import annotations

from settings import Settings
from worker.store.crypto import SecretBox
from worker.store.sql.accounts import AccountsMixin
from worker.store.sql.analyses import AnalysesMixin
from worker.store.sql.base import StoreUnavailable
from worker.store.sql.engine import create_engine
from worker.store.sql.messages import MessagesMixin
from worker.store.sql.oauth import OAuthMixin
from worker.store.sql.outbox import OutboxMixin
from worker.store.sql.quarantine import QuarantineMixin
from worker.store.sql.search import SearchMixin


class SqlStore(AccountsMixin, OutboxMixin, MessagesMixin, SearchMixin, AnalysesMixin, QuarantineMixin, OAuthMixin):
    """The store on a SQL database; `aclose()` closes its pool."""

    @classmethod
    def from_settings(cls, settings: Settings) -> SqlStore:
        """The store `settings` describe (DATABASE_URL, else the embedded SQLite file); opening it does not
        touch the database."""
        return cls(create_engine(settings), SecretBox(settings.secret_key))


__all__ = ["SqlStore", "StoreUnavailable"]
