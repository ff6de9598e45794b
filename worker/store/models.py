"""The store's records: accounts, outbox items, synced messages, sync state, and their validation."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator

from worker.mail.folders import DEFAULT_FOLDERS
from worker.mail.message import ParsedMessage, check_header, validate_address, validate_addresses
from worker.mail.smtp import DeliveryStep as DeliveryStep
from worker.mail.smtp import TlsMode
from worker.runtime.bounded import brief
from worker.runtime.errors import InvalidData

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_RECIPIENTS = 10_000  # per list; the API's limit for to + cc + bcc is MAIL_MAX_RECIPIENTS (default 100)
STORED = {"stored": True}  # validation context: data read back from the store was validated when written
ADDRESS_FIELDS = {"sender", "sender_name", "to", "cc", "bcc", "subject"}


def _stored(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get("stored"))


def check_id(kind: str, value: str) -> str:
    """`value` when it is a safe identifier (no ':' or other key syntax); raises InvalidData (a ValueError: a
    job that meets one is dead-lettered at once) otherwise."""
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidData(f"invalid {kind} {brief(value)}")
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def mailbox_key(mailbox: str) -> str:
    """A key-safe, stable token for a mailbox name of any charset."""
    return hashlib.sha256(mailbox.encode()).hexdigest()[:20]


class AccountIn(BaseModel):
    """What is needed to create a mail account."""

    email: str
    username: str = Field(max_length=1000)
    secret: SecretStr = Field(max_length=100_000)
    imap_host: str = Field(max_length=253)
    imap_port: int = Field(993, ge=1, le=65535)
    imap_tls: TlsMode = TlsMode.IMPLICIT
    smtp_host: str = Field(max_length=253)
    smtp_port: int = Field(465, ge=1, le=65535)
    smtp_tls: TlsMode = TlsMode.IMPLICIT
    mailboxes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FOLDERS),
        description="folders to sync: names and roles (\\Sent, \\Archive, ...), resolved by folder discovery",
        max_length=1000,
    )
    active: bool = True
    timeout_s: float = Field(30.0, gt=0, le=600, description="per protocol call (IMAP and SMTP)")
    auth_type: Literal["password", "oauth2"] = "password"

    @field_validator("email")
    @classmethod
    def _email(cls, value: str, info: ValidationInfo) -> str:
        return value if _stored(info) else validate_address(value)


class Account(AccountIn):
    """A stored account; `secret` is decrypted but stays a SecretStr (hidden in repr and dumps)."""

    id: str
    tenant_id: str
    created_at: datetime
    auth_state: Literal["ok", "auth_error"] = "ok"
    auth_error: str | None = None


class OutboxStatus(StrEnum):
    """Delivery state of an outbox item. Final: sent, failed, bounced, cancelled; `ambiguous` waits for the
    Sent-folder lookup or an operator's decision."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    BOUNCED = "bounced"
    CANCELLED = "cancelled"
    AMBIGUOUS = "ambiguous"


HISTORY_MAX = 50
FINAL_STATUSES = frozenset({OutboxStatus.SENT, OutboxStatus.FAILED, OutboxStatus.BOUNCED, OutboxStatus.CANCELLED})


class RecipientOutcome(BaseModel):
    """What is known of one recipient: the submission server's answer, then any bounce report."""

    state: str  # accepted | deferred | rejected | bounced | delivered
    code: int | None = None
    message: str = ""
    status: str | None = None  # enhanced status code of a bounce, e.g. 5.1.1
    diagnostic: str | None = None  # the remote server's diagnostic from a bounce


class OutboxEvent(BaseModel):
    """One entry of an outbox item's history (kept on the item, newest last, bounded)."""

    at: datetime
    status: OutboxStatus
    step: DeliveryStep | None = None
    note: str = ""


class OutboxIn(BaseModel):
    """A message to send; addresses are validated strictly on creation."""

    account_id: str
    sender: str
    sender_name: str | None = None
    to: list[str] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    cc: list[str] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    bcc: list[str] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    subject: str = ""
    text: str | None = None
    html: str | None = None

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str, info: ValidationInfo) -> str:
        return value if _stored(info) else validate_address(value)

    @field_validator("subject", "sender_name")
    @classmethod
    def _header(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or _stored(info):  # stored values were checked when written
            return value
        return check_header(str(info.field_name), value)

    @field_validator("to", "cc", "bcc")
    @classmethod
    def _rcpts(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return value if _stored(info) else validate_addresses(value)


class OutboxItem(OutboxIn):
    """A stored outbox item. `message_id` is created once and reused by every delivery attempt."""

    id: str
    tenant_id: str
    message_id: str
    status: OutboxStatus = OutboxStatus.QUEUED
    recipients: dict[str, RecipientOutcome] = Field(default_factory=dict)
    attempts: int = 0
    delivery_step: DeliveryStep | None = None  # the SMTP step the current attempt reached
    send_attempt: str | None = None  # token of the attempt that owns the item while it is sending
    send_job_id: str | None = None
    auto_resends: int = 0  # resends decided by the Sent-folder lookup (at most one)
    resolution: str | None = None  # how the final state was decided: smtp, sent_folder, bounce, operator, ...
    history: list[OutboxEvent] = Field(default_factory=list)
    last_error: str | None = None
    scheduled_at: datetime | None = None
    scheduled_job_id: str | None = None
    send_started_at: datetime | None = None
    lateness_s: float | None = None
    sent_at: datetime | None = None
    created_at: datetime
    updated_at: datetime

    @property
    def needs_decision(self) -> bool:
        """Ambiguous: delivery is unknown and automatic resolution could not settle it (yet)."""
        return self.status is OutboxStatus.AMBIGUOUS

    def noted(self, status: OutboxStatus, note: str, step: DeliveryStep | None = None) -> list[OutboxEvent]:
        """The history with one more entry (the oldest dropped past HISTORY_MAX)."""
        entry = OutboxEvent(at=utcnow(), status=status, step=step, note=note[:500])
        return [*self.history, entry][-HISTORY_MAX:]

    def envelope(self) -> list[str]:
        """All envelope recipients (To, Cc and Bcc), each once (they were validated on creation)."""
        seen: set[str] = set()
        out: list[str] = []
        for address in [*self.to, *self.cc, *self.bcc]:
            if address.lower() not in seen:
                seen.add(address.lower())
                out.append(address)
        return out


class StoredMessage(BaseModel):
    """A synced message: one per server location (account, mailbox, UIDVALIDITY, UID).

    `content_id` identifies the same mail in another location (a copy, a re-sync after a UIDVALIDITY change);
    analyses are keyed by it. `flags` are the server's flags; `removed_at` is set once the server expunged it
    (or its UIDVALIDITY was replaced): the record stays, but it is no longer a known UID.
    """

    id: str
    tenant_id: str
    account_id: str
    mailbox: str
    uidvalidity: int
    uid: int
    content_id: str
    parsed: ParsedMessage
    flags: tuple[str, ...] = ()
    stored_at: datetime
    removed_at: datetime | None = None


class Quarantined(BaseModel):
    """A message that could not be parsed or stored: enough to fetch it again, and why it failed."""

    id: str
    tenant_id: str
    account_id: str
    mailbox: str
    uidvalidity: int
    uid: int
    size: int | None = None
    error: str
    attempts: int = 1
    first_seen: datetime
    last_seen: datetime
    resolved: bool = False
    resolved_at: datetime | None = None


class SyncState(BaseModel):
    """Incremental sync position of one (account, mailbox)."""

    uidvalidity: int | None = None
    uidnext: int | None = None
    highest_uid: int = 0
    highestmodseq: int | None = None
    flag_cursor: int = 0
    last_sync_at: datetime | None = None


@dataclass(frozen=True)
class InsertResult:
    """Outcome of storing one fetched message.

    `message_id` is the record of this server location. `new`: the account had no message with this content
    before (false for a copy in another mailbox or a re-sync after a UIDVALIDITY change). `stored`: this call
    created the record (false when the location was already stored, e.g. by a crashed run or a concurrent sync).
    """

    uid: int
    message_id: str
    content_id: str
    new: bool
    stored: bool = True
