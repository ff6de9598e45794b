"""The message listing's query, rows and opaque cursor: newest first, keyset on (sort_date, id).

`sort_date` is the message's Date header, else when it was stored. A cursor names the last row of a page;
the next page holds the rows strictly after it in that order, so messages stored meanwhile never shift,
repeat or skip rows (new mail is newer: it shows on a fresh first page).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field, field_validator

from worker.store.models import check_id

MAX_PAGE = 200
MAX_QUERY_CHARS = 500
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadCursor(ValueError):
    """A cursor this code did not make (or one that was altered)."""


def encode_cursor(sort_date: datetime, message_id: str) -> str:
    """The opaque cursor after the row (sort_date, message_id)."""
    micros = (sort_date - EPOCH) // timedelta(microseconds=1)
    raw = json.dumps([micros, message_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(sort_date, id) of a cursor; raises BadCursor for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        micros, message_id = json.loads(raw)
        if not isinstance(micros, int) or isinstance(micros, bool):
            raise TypeError("position")
        when = EPOCH + timedelta(microseconds=micros)
        return when, check_id("message id", message_id)
    except (ValueError, TypeError, binascii.Error, OverflowError) as exc:
        raise BadCursor("invalid cursor: pass the next_cursor of a previous page unchanged") from exc


class MessageQuery(BaseModel):
    """Filters of the listing (all optional, combined with AND) and the page wanted."""

    account_id: str | None = None
    mailbox: str | None = Field(None, min_length=1, max_length=500)
    since: datetime | None = Field(None, description="sort_date >= since")
    until: datetime | None = Field(None, description="sort_date < until")
    category: str | None = Field(None, min_length=1, max_length=64, description="the analysis' category")
    needs_reply: bool | None = Field(None, description="the analysis says a reply is needed (true) or not (false)")
    q: str | None = Field(None, min_length=1, max_length=MAX_QUERY_CHARS, description="words in subject or text")
    include_removed: bool = Field(False, description="also messages the server expunged")
    limit: int = Field(50, ge=1, le=MAX_PAGE)
    cursor: str | None = None

    @field_validator("account_id")
    @classmethod
    def _account(cls, v: str | None) -> str | None:
        return None if v is None else check_id("account id", v)

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a timezone (e.g. 2026-01-31T00:00:00Z)")
        return v

    @field_validator("cursor")
    @classmethod
    def _cursor(cls, v: str | None) -> str | None:
        if v is not None:
            decode_cursor(v)
        return v


class MessageSummary(BaseModel):
    """One row of the listing: headers, a snippet of the text, the analysis verdict; no body."""

    id: str
    account_id: str
    mailbox: str
    uid: int
    subject: str
    sender: str
    to: list[str]
    date: datetime | None
    sort_date: datetime
    snippet: str
    size: int
    attachments: int
    flags: list[str]
    category: str | None
    needs_reply: bool | None
    removed: bool


class MessagePage(BaseModel):
    """A page of the listing; `next_cursor` is None on the last page."""

    items: list[MessageSummary]
    next_cursor: str | None
