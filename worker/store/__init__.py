"""The email data store: accounts, outbox, synced messages, sync state and analyses, per tenant.

Job payloads carry IDs only; everything else lives here. Every method takes the tenant id, so a job can only
reach its own tenant's data. Account secrets are encrypted with AES-GCM (`crypto.SecretBox`, tenant and account
bound in as associated data) and are only ever handed out as SecretStr.

- `models`: the records and their validation.
- `protocol`: the `Store` protocol every backend implements.
- `crypto`: encryption of secrets at rest.
- `redis`: the Redis backend.
"""

from worker.store.crypto import SecretBox
from worker.store.models import (
    FINAL_STATUSES,
    STORED,
    Account,
    AccountIn,
    DeliveryStep,
    InsertResult,
    OutboxEvent,
    OutboxIn,
    OutboxItem,
    OutboxStatus,
    Quarantined,
    RecipientOutcome,
    StoredMessage,
    SyncState,
    check_id,
    mailbox_key,
    utcnow,
)
from worker.store.protocol import Store
from worker.store.redis import RedisStore

__all__ = [
    "FINAL_STATUSES",
    "STORED",
    "Account",
    "AccountIn",
    "DeliveryStep",
    "InsertResult",
    "OutboxEvent",
    "OutboxIn",
    "OutboxItem",
    "OutboxStatus",
    "Quarantined",
    "RecipientOutcome",
    "RedisStore",
    "SecretBox",
    "Store",
    "StoredMessage",
    "SyncState",
    "check_id",
    "mailbox_key",
    "utcnow",
]
