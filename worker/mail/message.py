"""Outgoing message building (policy.SMTP, strict addresses) and tolerant parsing of fetched mail.

`parse_message` never raises: broken MIME, unknown charsets and odd headers become `defects`.
A message's content identity is its Message-ID plus a sha256 of normalised content, so the same
mail is recognised after a UIDVALIDITY reset or in another mailbox.
"""

from __future__ import annotations

import email
import hashlib
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.utils import format_datetime, make_msgid

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, Field

TEXT_LIMIT = 200_000  # characters of text/html body kept per message
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HASHED_HEADERS = (b"from", b"to", b"cc", b"subject", b"date", b"message-id")


class InvalidAddressError(ValueError):
    """An address that is not a single, syntactically valid addr-spec."""


class HeaderInjectionError(ValueError):
    """A header value carrying CR, LF or another control character."""


def validate_address(address: str) -> str:
    """The normalised form of one bare addr-spec (no display name, no list); raises InvalidAddressError."""
    if not isinstance(address, str) or _CONTROL.search(address):
        raise InvalidAddressError(f"invalid address {address!r}: control characters are not allowed")
    if any(c in address for c in ",;<>\"'()") or address != address.strip():
        raise InvalidAddressError(f"invalid address {address!r}: one bare address expected (user@domain)")
    try:
        info = validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise InvalidAddressError(f"invalid address {address!r}: {exc}") from None
    return info.normalized


def validate_addresses(addresses: Iterable[str]) -> list[str]:
    """Every address validated and normalised, duplicates removed (case-insensitive), order kept."""
    seen: set[str] = set()
    out: list[str] = []
    for raw in addresses:
        addr = validate_address(raw)
        if addr.lower() not in seen:
            seen.add(addr.lower())
            out.append(addr)
    return out


def check_header(name: str, value: str) -> str:
    """`value` unchanged when it is safe as a header value; raises HeaderInjectionError otherwise."""
    if _CONTROL.search(value.replace("\t", " ")):
        raise HeaderInjectionError(f"header injection rejected: {name} contains CR/LF or control characters")
    return value


def new_message_id(sender: str) -> str:
    """A fresh Message-ID on the sender's domain; create it once per outbox item and reuse it."""
    domain = validate_address(sender).rsplit("@", 1)[1]
    return make_msgid(domain=domain)


def build_message(
    *,
    sender: str,
    to: Sequence[str],
    subject: str,
    message_id: str,
    text: str | None = None,
    html: str | None = None,
    cc: Sequence[str] = (),
    sender_name: str | None = None,
    reply_to: str | None = None,
    date: datetime | None = None,
) -> EmailMessage:
    """An EmailMessage (policy.SMTP) for the envelope; Bcc recipients never appear in the headers."""
    if not to and not cc:
        raise InvalidAddressError("at least one To or Cc recipient is required")
    msg = EmailMessage(policy=policy.SMTP)
    from_addr = validate_address(sender)
    display = check_header("From", sender_name) if sender_name else ""
    local, domain = from_addr.rsplit("@", 1)
    msg["From"] = Address(display_name=display, username=local, domain=domain)
    if to:
        msg["To"] = ", ".join(validate_addresses(to))
    if cc:
        msg["Cc"] = ", ".join(validate_addresses(cc))
    if reply_to:
        msg["Reply-To"] = validate_address(reply_to)
    msg["Subject"] = check_header("Subject", subject)
    msg["Message-ID"] = check_header("Message-ID", message_id)
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["MIME-Version"] = "1.0"
    if html is not None:
        msg.set_content(text or "")
        msg.add_alternative(html, subtype="html")
    else:
        msg.set_content(text or "")
    return msg


class AttachmentInfo(BaseModel):
    """Metadata of one attachment (content is not kept)."""

    filename: str | None = None
    content_type: str = "application/octet-stream"
    size: int = 0


# Headers kept for triage (list mail, automation, authentication, priority, language, spam verdicts).
TRIAGE_HEADERS = (
    "list-id",
    "list-unsubscribe",
    "precedence",
    "auto-submitted",
    "authentication-results",
    "reply-to",
    "importance",
    "x-priority",
    "priority",
    "content-language",
    "x-spam-flag",
    "x-spam-status",
    "x-github-reason",
)
HEADER_LIMIT = 1000


class ParsedMessage(BaseModel):
    """What the worker keeps of a fetched message."""

    message_id_header: str | None = None
    subject: str = ""
    from_: str = Field(default="", alias="from")
    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    date: datetime | None = None
    text: str = ""
    html: str = ""
    attachments: list[AttachmentInfo] = Field(default_factory=list)
    defects: list[str] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict, description="triage headers, lower-cased names")
    size: int = 0
    content_hash: str
    content_id: str

    model_config = {"populate_by_name": True}


def _split_raw(raw: bytes) -> tuple[bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, body = raw.partition(sep)
        if found:
            return head, body
    return raw, b""


def _norm_lines(data: bytes) -> bytes:
    return b"\n".join(line.rstrip() for line in data.replace(b"\r\n", b"\n").split(b"\n")).strip()


def content_identity(raw: bytes) -> tuple[str | None, str, str]:
    """(Message-ID, content hash, content id) of raw mail; independent of server-added trace headers."""
    head, body = _split_raw(raw)
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", head)
    picked: list[bytes] = []
    message_id: str | None = None
    for line in unfolded.replace(b"\r\n", b"\n").split(b"\n"):
        name, colon, value = line.partition(b":")
        key = name.strip().lower()
        if colon and key in _HASHED_HEADERS:
            value = b" ".join(value.split())
            picked.append(key + b":" + value)
            if key == b"message-id" and message_id is None:
                message_id = value.decode("ascii", "replace") or None
    digest = hashlib.sha256()
    for part in sorted(picked):
        digest.update(part + b"\n")
    digest.update(b"\n" + _norm_lines(body))
    content_hash = digest.hexdigest()
    content_id = hashlib.sha256(f"{message_id or ''}\0{content_hash}".encode()).hexdigest()
    return message_id, content_hash, content_id


def _text_of(part: Message, defects: list[str]) -> str:
    """The decoded text of a text/* part; an unknown charset falls back to UTF-8 with replacements."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    header = part.get("Content-Type")
    charset = str(getattr(header, "params", {}).get("charset") or "utf-8")
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        defects.append(f"body: unknown charset {charset!r}")
        return payload.decode("utf-8", "replace")


def _addresses(msg: Message, name: str, defects: list[str]) -> list[str]:
    try:
        header = msg.get(name)
        if header is None:
            return []
        addresses = getattr(header, "addresses", None)
        if addresses is None:
            return [str(header)]
        return [str(a.addr_spec) for a in addresses]
    except Exception as exc:
        defects.append(f"{name}: {type(exc).__name__}: {exc}")
        return []


def _header_str(msg: Message, name: str, defects: list[str]) -> str:
    try:
        value = msg.get(name)
        return "" if value is None else str(value)
    except Exception as exc:
        defects.append(f"{name}: {type(exc).__name__}: {exc}")
        return ""


def _date(msg: Message, defects: list[str]) -> datetime | None:
    try:
        header = msg.get("Date")
        parsed = getattr(header, "datetime", None)  # policy.default parsed it already
    except Exception as exc:
        defects.append(f"Date: {type(exc).__name__}: {exc}")
        return None
    if not isinstance(parsed, datetime):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse raw RFC 5322 bytes with policy.default; never raises, problems land in `defects`."""
    raw = bytes(raw)
    message_id, content_hash, content_id = content_identity(raw)
    out = ParsedMessage(message_id_header=message_id, size=len(raw), content_hash=content_hash, content_id=content_id)
    defects = out.defects
    try:
        msg = email.message_from_bytes(raw, policy=policy.default)
        defects.extend(type(d).__name__ for d in msg.defects)
        out.subject = _header_str(msg, "Subject", defects)
        out.from_ = ", ".join(_addresses(msg, "From", defects))
        out.to = _addresses(msg, "To", defects)
        out.cc = _addresses(msg, "Cc", defects)
        out.date = _date(msg, defects)
        for name in TRIAGE_HEADERS:
            if name in msg:
                value = _header_str(msg, name, defects)
                if value:
                    out.headers[name] = value[:HEADER_LIMIT]
        if msg.is_multipart():
            for kind in ("plain", "html"):
                try:
                    body = msg.get_body((kind,))  # type: ignore[attr-defined]
                except Exception as exc:
                    defects.append(f"get_body: {type(exc).__name__}: {exc}")
                    body = None
                if body is not None:
                    setattr(out, "text" if kind == "plain" else "html", _text_of(body, defects)[:TEXT_LIMIT])
        else:  # the common single-part case: the message is its own body (cheaper than get_body)
            ctype = msg.get_content_type()
            if ctype in ("text/plain", "text/html"):
                setattr(out, "text" if ctype == "text/plain" else "html", _text_of(msg, defects)[:TEXT_LIMIT])
        for part in msg.iter_attachments():  # type: ignore[attr-defined]
            payload = part.get_payload(decode=True)
            out.attachments.append(
                AttachmentInfo(
                    filename=part.get_filename(),
                    content_type=part.get_content_type(),
                    size=len(payload) if isinstance(payload, bytes) else 0,
                )
            )
    except Exception as exc:  # the parser gave up part-way: keep what was read, identity and size
        defects.append(f"parse: {type(exc).__name__}: {exc}")
    return out
