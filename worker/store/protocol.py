"""The `Store` protocol: what jobs, the API and the AI helper need from storage, scoped per tenant."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from pydantic import SecretStr

from worker.mail.message import ParsedMessage
from worker.store.listing import MessagePage, MessageQuery
from worker.store.models import (
    Account,
    AccountIn,
    InsertResult,
    OutboxIn,
    OutboxItem,
    OutboxStatus,
    Quarantined,
    StoredMessage,
    SyncState,
)


class Store(Protocol):
    """What jobs and the AI helper need from storage. Every call is scoped to one tenant (except
    `list_active_accounts`, which returns IDs only). Locks are not here: they live in Redis (`worker.store.Locks`)."""

    async def create_account(self, tenant_id: str, data: AccountIn) -> Account: ...
    async def get_account(self, tenant_id: str, account_id: str) -> Account | None: ...
    async def set_account_active(self, tenant_id: str, account_id: str, active: bool) -> bool: ...
    async def list_accounts(self, tenant_id: str) -> list[Account]: ...
    async def list_active_accounts(self) -> list[tuple[str, str]]: ...
    async def delete_account(self, tenant_id: str, account_id: str) -> bool: ...
    async def set_auth_error(self, tenant_id: str, account_id: str, reason: str) -> bool: ...
    async def update_account_secret(self, tenant_id: str, account_id: str, secret: SecretStr) -> bool: ...

    async def create_outbox(self, tenant_id: str, data: OutboxIn) -> OutboxItem: ...
    async def get_outbox(self, tenant_id: str, outbox_id: str) -> OutboxItem | None: ...
    async def transition_outbox(
        self,
        tenant_id: str,
        outbox_id: str,
        expect: Iterable[OutboxStatus],
        to: OutboxStatus,
        *,
        match: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> OutboxItem | None:
        """Compare-and-set: only when the status is one of `expect` and every `match` field equals its value."""
        ...

    async def update_outbox(self, tenant_id: str, outbox_id: str, **fields: Any) -> OutboxItem: ...
    async def list_outbox(
        self,
        tenant_id: str,
        *,
        status: OutboxStatus | None = None,
        account_id: str | None = None,
        limit: int = 100,
    ) -> list[OutboxItem]:
        """The tenant's outbox items, newest first."""
        ...

    async def find_outbox_by_message_id(self, tenant_id: str, message_id: str) -> OutboxItem | None:
        """The outbox item that was sent with this Message-ID (as written, angle brackets included)."""
        ...

    async def unfinished_outbox(
        self, statuses: Iterable[OutboxStatus], updated_before: datetime, limit: int = 500
    ) -> list[OutboxItem]:
        """Items of any tenant in one of `statuses` not updated since `updated_before` (for the reaper)."""
        ...

    async def insert_messages(
        self,
        tenant_id: str,
        account_id: str,
        mailbox: str,
        uidvalidity: int,
        items: Sequence[tuple[int, tuple[str, ...], ParsedMessage]],
    ) -> list[InsertResult]: ...
    async def get_message(self, tenant_id: str, message_id: str) -> StoredMessage | None: ...
    async def list_messages(self, tenant_id: str, query: MessageQuery) -> MessagePage:
        """A page of the tenant's messages matching the filters (and words), newest first; keyset cursor."""
        ...

    async def count_messages(self, tenant_id: str, account_id: str) -> int: ...
    async def known_uids(self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int) -> list[int]: ...
    async def get_flags(
        self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int, uids: Sequence[int]
    ) -> dict[int, tuple[str, ...]]: ...
    async def set_flags(
        self,
        tenant_id: str,
        account_id: str,
        mailbox: str,
        uidvalidity: int,
        flags: dict[int, tuple[str, ...]],
    ) -> None: ...
    async def expunge_uids(
        self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int, uids: Sequence[int]
    ) -> int: ...
    async def reset_mailbox(self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int) -> None: ...
    async def get_sync_state(self, tenant_id: str, account_id: str, mailbox: str) -> SyncState: ...
    async def put_sync_state(self, tenant_id: str, account_id: str, mailbox: str, state: SyncState) -> None: ...
    async def analysis_requested(self, tenant_id: str, content_ids: Sequence[str]) -> list[bool]: ...
    async def mark_analysis_requested(self, tenant_id: str, content_ids: Sequence[str]) -> list[bool]: ...

    async def put_analysis(self, tenant_id: str, content_id: str, data: dict[str, Any]) -> bool: ...
    async def get_analysis(self, tenant_id: str, content_id: str) -> dict[str, Any] | None: ...

    async def quarantine_message(
        self,
        tenant_id: str,
        account_id: str,
        mailbox: str,
        uidvalidity: int,
        uid: int,
        *,
        error: str,
        size: int | None = None,
    ) -> Quarantined: ...
    async def get_quarantined(self, tenant_id: str, quarantine_id: str) -> Quarantined | None: ...
    async def list_quarantined(
        self,
        tenant_id: str,
        account_id: str | None = None,
        *,
        mailbox: str | None = None,
        include_resolved: bool = False,
        limit: int = 100,
    ) -> list[Quarantined]: ...
    async def resolve_quarantined(
        self, tenant_id: str, account_id: str, mailbox: str, uidvalidity: int, uids: Sequence[int]
    ) -> int: ...

    async def aclose(self) -> None: ...
