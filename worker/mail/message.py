"""Outgoing message building (policy.SMTP, strict addresses) and tolerant parsing of fetched mail.

`parse_message` never raises and never returns a string that fails to encode: broken MIME, unknown
charsets and odd headers become `defects`, raw 8-bit bytes are decoded as `worker.mail.decode` says.

**Identity.** A message's `content_id` is the sha256 of its whole raw bytes with CRLF read as LF
(servers store either and serve CRLF). So a *copy* is the same bytes as the server serves them: the
same mail in two folders (IMAP COPY/MOVE, Gmail labels), or the same mail fetched again after a
UIDVALIDITY change. Two messages that differ anywhere - one header, a MIME boundary, a charset, one
byte of an attachment - are different messages, even with the same Message-ID. A second delivery of
one sent mail (its own Received headers) is a different message too: at worst analysed twice, never
merged with anything else.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email import policy
from email.header import decode_header
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import format_datetime, make_msgid, parsedate_to_datetime
from typing import Any, cast

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, Field

from worker.mail.decode import NOT_ESCAPE as _NOT_ESCAPE
from worker.mail.decode import charset_codec, clean, decode_bytes, detect, is_clean
from worker.runtime.bounded import brief

TEXT_LIMIT = 200_000  # characters of text/html body kept per message
# C0 and C1 controls (CR, LF, NEL U+0085, ...) and the Unicode line/paragraph separators U+2028/U+2029
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
HEADER_MAX_OCTETS = 998  # RFC 5322 2.1.1: a header line is at most 998 octets (we take no longer value)
LOCAL_PART_MAX_OCTETS = 64  # RFC 5321 4.5.3.1.1
ADDRESS_MAX_OCTETS = 254  # RFC 5321 4.5.3.1.3: a path of 256 octets, the angle brackets included


class InvalidAddressError(ValueError):
    """An address that is not a single, syntactically valid addr-spec."""


class HeaderInjectionError(ValueError):
    """A header value carrying CR, LF or another control character."""


def validate_address(address: str) -> str:
    """The normalised form of one bare addr-spec (no display name, no list) within RFC 5321's limits (local part
    64 octets, address 254); raises InvalidAddressError."""
    if not isinstance(address, str) or _CONTROL.search(address):
        raise InvalidAddressError(f"invalid address {brief(address)}: control characters are not allowed")
    if len(address.encode()) > ADDRESS_MAX_OCTETS:
        raise InvalidAddressError(f"invalid address {brief(address)}: longer than {ADDRESS_MAX_OCTETS} octets")
    if any(c in address for c in ",;<>\"'()") or address != address.strip():
        raise InvalidAddressError(f"invalid address {brief(address)}: one bare address expected (user@domain)")
    try:
        info = validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise InvalidAddressError(f"invalid address {brief(address)}: {exc}") from None
    if len(info.local_part.encode()) > LOCAL_PART_MAX_OCTETS:
        raise InvalidAddressError(
            f"invalid address {brief(address)}: local part longer than {LOCAL_PART_MAX_OCTETS} octets"
        )
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
    """`value` unchanged when it is safe as a header value (no CR/LF, other controls or Unicode line separators,
    at most 998 octets); raises HeaderInjectionError otherwise."""
    if _CONTROL.search(value.replace("\t", " ")):
        raise HeaderInjectionError(
            f"header injection rejected: {name} contains CR/LF, control characters or line separators"
        )
    if len(value.encode("utf-8", "surrogatepass")) > HEADER_MAX_OCTETS:
        raise HeaderInjectionError(f"{name} is longer than {HEADER_MAX_OCTETS} octets (RFC 5322)")
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
HEADER_LIMIT = 1000  # characters kept of a triage header
HEADER_PARSE_LIMIT = 64 * 1024  # characters of one header given to the header parser
MAX_ATTACHMENTS = 200  # attachment records kept per message
MAX_DEFECTS = 50
MANY_WORDS = 50  # encoded words in one header above which the linear legacy decoder is used


class ParsedMessage(BaseModel):
    """What the worker keeps of a fetched message. Every string encodes to UTF-8 and has no NUL."""

    message_id_header: str | None = None
    subject: str = ""
    from_: str = Field(default="", alias="from")
    from_name: str = ""
    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    date: datetime | None = None
    text: str = ""
    html: str = ""
    attachments: list[AttachmentInfo] = Field(default_factory=list)
    defects: list[str] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict, description="triage headers, lower-cased names")
    size: int = 0
    content_id: str

    model_config = {"populate_by_name": True}


def content_id(raw: bytes) -> str:
    """The "same message" key: sha256 of the whole message, CRLF read as LF (see the module doc)."""
    return hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest()


_UNFOLD = re.compile(r"\r?\n(?=[ \t])|\r?\n$")
_ATOM = r"[^\s<>,;:\"()\[\]\\@]+"
_SIMPLE_ADDRESS = re.compile(rf"\s*(?:([^<>,;:\"()\[\]\\@]*?)\s*<({_ATOM}@{_ATOM})>|({_ATOM}@{_ATOM}))\s*$")
_NOT_SIMPLE = re.compile(r'["()\[\]\\]|=\?')
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FAST = BytesParser(_class=EmailMessage, policy=policy.compat32)  # type: ignore[arg-type]


class _Reader:
    """Decodes the pieces of one message; raw 8-bit header bytes are read with the message's charset hint."""

    def __init__(self, msg: EmailMessage, defects: list[str]) -> None:
        self.msg = msg
        self.defects = defects
        self.first: dict[str, str] = {}
        for name, value in msg.raw_items():  # raw values: compat32's get() mangles 8-bit bytes
            self.first.setdefault(str(name).lower(), value)
        self.hint = _param(msg, "charset") or self._detect_headers()

    def _detect_headers(self) -> str | None:
        """The charset of the message's raw 8-bit header bytes taken together (more signal than one header)."""
        raw = b" ".join(
            v.encode("utf-8", "surrogateescape")
            for v in self.first.values()
            if not is_clean(v) and not _NOT_ESCAPE.search(v)
        )
        if not raw:
            return None
        try:
            raw.decode("utf-8")
            return None
        except UnicodeDecodeError:
            return detect(raw)

    def defect(self, where: str, exc: BaseException) -> None:
        if len(self.defects) < MAX_DEFECTS:
            self.defects.append(clean(f"{where}: {type(exc).__name__}: {exc}")[:300])

    def raw(self, name: str) -> str | None:
        """The first `name` header, unfolded and decoded to clean text (RFC 2047 words still encoded)."""
        value = self.first.get(name.lower())
        if value is None:
            return None
        return _CTRL.sub(" ", _UNFOLD.sub("", clean(value, self.hint)))[:HEADER_PARSE_LIMIT]

    def header(self, name: str) -> Any:
        """The modern header object (RFC 2047 decoded, addresses parsed) of the clean raw value, or None."""
        value = self.raw(name)
        if value is None:
            return None
        try:
            return policy.default.header_factory(name, value)
        except Exception as exc:
            self.defect(name, exc)
            return None

    def text(self, name: str) -> str:
        """An unstructured header's text (RFC 2047 decoded)."""
        value = self.raw(name)
        if value is None:
            return ""
        if "=?" in value:
            if value.count("=?") > MANY_WORDS:  # the modern parser is quadratic in encoded words
                value = _CTRL.sub(" ", self.many_words(value))
            else:
                header = self.header(name)
                value = "" if header is None else _CTRL.sub(" ", clean(str(header), self.hint))
        return value.strip()

    def many_words(self, value: str) -> str:
        """RFC 2047 decoding with the linear legacy decoder, each word in its charset (clean text)."""
        try:
            parts = decode_header(value)
        except Exception as exc:
            self.defect("encoded words", exc)
            return value
        out: list[str] = []
        for chunk, charset in parts:
            if isinstance(chunk, str):
                out.append(clean(chunk, self.hint))
            elif charset is None or charset == "unknown-8bit":
                out.append(clean(chunk.decode("raw-unicode-escape"), self.hint))
            else:
                out.append(decode_bytes(chunk, charset))
        return "".join(out)

    def addresses(self, name: str) -> list[tuple[str, str]]:
        """(display name, addr-spec) of each address of an address header; unparsable entries are left out."""
        value = self.raw(name)
        if value is None:
            return []
        if value.isascii() and not _NOT_SIMPLE.search(value):  # plain `a@b, Name <c@d>`: no full parse needed
            simple = [_SIMPLE_ADDRESS.match(item) for item in value.split(",") if item.strip()]
            if all(simple):
                return [(" ".join((m.group(1) or "").split()), m.group(2) or m.group(3)) for m in simple if m]
        header = self.header(name)
        out: list[tuple[str, str]] = []
        try:
            for addr in getattr(header, "addresses", ()):
                spec = clean(addr.addr_spec, self.hint)
                if spec and spec != "<>":
                    out.append((_CTRL.sub(" ", clean(addr.display_name, self.hint)).strip(), spec))
        except Exception as exc:
            self.defect(name, exc)
        return out

    def date(self) -> datetime | None:
        value = self.raw("Date")
        if not value:
            return None
        try:
            parsed = parsedate_to_datetime(value)
        except Exception as exc:
            self.defect("Date", exc)
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    def body_text(self, part: Message) -> str:
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            return ""
        declared = _param(part, "charset")
        if declared and charset_codec(declared) is None and len(self.defects) < MAX_DEFECTS:
            self.defects.append(f"body: unknown charset {declared[:50]!r}")
        return decode_bytes(payload, declared)[:TEXT_LIMIT]

    def filename(self, part: Message) -> str | None:
        try:
            name = part.get_filename()
        except Exception as exc:
            self.defect("filename", exc)
            return None
        if name is None:
            return None
        try:  # mailers often put RFC 2047 words in filename= (not allowed, but common)
            decoded = str(policy.default.header_factory("x-filename", _UNFOLD.sub("", clean(str(name), self.hint))))
        except Exception:
            decoded = str(name)
        return _CTRL.sub(" ", clean(decoded, self.hint)).strip()[:HEADER_LIMIT] or None


def _param(part: Message, name: str) -> str | None:
    try:
        value = part.get_param(name)
    except Exception:
        return None
    if isinstance(value, tuple):  # RFC 2231: (charset, language, value)
        value = value[2]
    return clean(value) if isinstance(value, str) else None


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse raw RFC 5322 bytes; never raises, problems land in `defects`, every string is clean."""
    raw = bytes(raw)
    out = ParsedMessage(size=len(raw), content_id=content_id(raw))
    defects = out.defects
    try:
        msg = cast(EmailMessage, _FAST.parsebytes(raw))
        read = _Reader(msg, defects)
        defects.extend(type(d).__name__ for d in msg.defects[:MAX_DEFECTS])
        mid = read.raw("Message-ID")
        out.message_id_header = mid.strip() or None if mid is not None else None
        out.subject = read.text("Subject")
        senders = read.addresses("From")
        if senders:
            out.from_name, out.from_ = senders[0]
            out.from_ = ", ".join(spec for _, spec in senders)
        out.to = [spec for _, spec in read.addresses("To")]
        out.cc = [spec for _, spec in read.addresses("Cc")]
        out.date = read.date()
        for name in TRIAGE_HEADERS:
            value = read.text(name)
            if value:
                out.headers[name] = value[:HEADER_LIMIT]
        _read_bodies(msg, read, out)
    except Exception as exc:  # the parser gave up part-way: keep what was read, identity and size
        read_defect(defects, exc)
    return out


def read_defect(defects: list[str], exc: BaseException) -> None:
    """Record that parsing stopped at `exc`."""
    defects.append(clean(f"parse: {type(exc).__name__}: {exc}")[:300])


def _read_bodies(msg: EmailMessage, read: _Reader, out: ParsedMessage) -> None:
    if not msg.is_multipart():  # the common single-part case: the message is its own body
        ctype = msg.get_content_type()
        if ctype in ("text/plain", "text/html"):
            setattr(out, "text" if ctype == "text/plain" else "html", read.body_text(msg))
        elif msg.get_content_maintype() != "text" or msg.get_filename():
            out.attachments.append(_attachment(msg, read))
        return
    for kind in ("plain", "html"):
        try:
            body = msg.get_body((kind,))
        except Exception as exc:
            read.defect("get_body", exc)
            body = None
        if body is not None:
            setattr(out, "text" if kind == "plain" else "html", read.body_text(body))
    try:
        for part in msg.iter_attachments():
            if len(out.attachments) >= MAX_ATTACHMENTS:
                out.defects.append(f"more than {MAX_ATTACHMENTS} attachments: the rest are not listed")
                break
            out.attachments.append(_attachment(part, read))
    except Exception as exc:
        read.defect("attachments", exc)


def _attachment(part: Message, read: _Reader) -> AttachmentInfo:
    payload = part.get_payload(decode=True)
    ctype = clean(part.get_content_type())[:200]
    return AttachmentInfo(
        filename=read.filename(part), content_type=ctype, size=len(payload) if isinstance(payload, bytes) else 0
    )
