"""Bounce parsing: delivery status notifications (RFC 3464 multipart/report) and common plain-text bounces.

`parse_bounce(raw)` returns None for mail that is not a bounce, else the bounced recipients (address,
action, enhanced status code, diagnostic) and the Message-IDs that identify the original message, best
first: the returned message/rfc822 or text/rfc822-headers part, "Message-ID:" lines quoted in the text,
then In-Reply-To and References of the bounce itself. Plain-text formats understood: Postfix and qmail
(`<addr>: reason`), Exim (`  addr` followed by indented reasons; X-Failed-Recipients), Sendmail
(`550 5.1.1 <addr>... reason`) and the generic "address: reason" shapes many MTAs use. Never raises.
"""

from __future__ import annotations

import email
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Literal

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]

_ADDR = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+"
_TRIM = re.compile(r"^[\s<>:;,.*\"'()\[\]-]+|[\s<>:;,.*\"'()\[\]-]+$")
_LEAD = re.compile(r"^(?:smtp=|rfc822;|')+", re.IGNORECASE)
_MSGID = re.compile(r"<[^<>\s@]+@[^<>\s]+>")
_MSGID_LINE = re.compile(r"^\s*Message-Id:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_CODE = re.compile(r"(?<![\d.])([245]\d\d)(?![\d.])")
_FROM_DAEMON = re.compile(r"mailer[-_ ]?daemon|postmaster|mail delivery (?:system|subsystem)", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (?:status )?notification|delivery (?:has )?failed|mail delivery failed|failure notice"
    r"|returned mail|returned to sender|non[- ]?delivery|could not be delivered|delivery failure"
    r"|mail system error|unable to deliver|nondeliverable|delivery problem|warning: could not send",
    re.IGNORECASE,
)
_TEMPORARY = re.compile(
    r"will (?:continue|keep) (?:trying|to try)|still trying|will be retried|will retry|has been delayed"
    r"|delayed|not yet been delivered|warning:|temporary (?:failure|error)|is a warning",
    re.IGNORECASE,
)
_ORIGINAL_MARKERS = re.compile(
    r"^(?:-{2,}.*(?:copy of (?:the|your) message|original message|returned message|message headers follow"
    r"|below this line).*|\s*Original message follows\.?|.*The (?:original|text of your) message.*follow.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_ANGLE_LINE = re.compile(rf"^\s*<({_ADDR})>\s*(?:\(.*?\))?\s*:?\s*(.*)$")
_BARE_LINE = re.compile(rf"^\s+({_ADDR}):?\s*$")
_SENDMAIL = re.compile(rf"^\s*(?:<<<\s*)?[45]\d\d[ -](?:[45]\.\d+\.\d+\s+)?<?({_ADDR})>?\.{{3}}\s*(.*)$")
_SAID = re.compile(rf"^\s*(?:[^:\s]+:\s*)?<?({_ADDR})>?\s*(?:\([^)]*\))?\s*[:,-]\s+(.*\S.*)$")
_NOT_A_RECIPIENT_LINE = re.compile(
    r"^\s*(?:from|to|cc|reply-to|sender|return-path|received|date|subject|message-id|reporting-mta|x-[\w-]+"
    r"|envelope-to|delivered-to|mail from|helo|ehlo|>>>\s*mail from)\s*:?",
    re.IGNORECASE,
)
_DAEMON_ADDR = re.compile(r"^(?:mailer-daemon|postmaster|mdaemon|root|abuse|noreply|no-reply)@", re.IGNORECASE)
_REASON_WORDS = re.compile(
    r"user unknown|unknown user|no such|does not exist|doesn't exist|not found|unknown (?:local|recipient)"
    r"|mailbox (?:unavailable|full|is full|not found|disabled)|invalid (?:recipient|mailbox|address)"
    r"|account (?:is )?(?:disabled|unavailable|expired|inactive)|quota|over quota|relay|rejected|refused"
    r"|undeliverable|not (?:a )?(?:valid|known)|unrouteable|host not found|said:|error|denied|blocked",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class BouncedRecipient:
    """What a bounce reports for one recipient."""

    address: str
    action: Action
    status: str | None = None  # enhanced status code, e.g. 5.1.1
    diagnostic: str | None = None
    remote_mta: str | None = None

    @property
    def permanent(self) -> bool:
        """A final failure (as opposed to a delay warning or a success report)."""
        return self.action == "failed"


@dataclass(frozen=True)
class Bounce:
    """A parsed bounce: which recipients, and which original message (candidate Message-IDs, best first)."""

    kind: Literal["dsn", "text"]
    recipients: list[BouncedRecipient]
    original_message_ids: list[str] = field(default_factory=list)
    reporting_mta: str | None = None


def might_be_bounce(raw: bytes) -> bool:
    """A cheap look at the headers only: False means `parse_bounce` would certainly return None."""
    try:
        head = BytesHeaderParser(policy=policy.compat32).parsebytes(raw[:65536])
    except Exception:
        return False
    return "report" in str(head.get("Content-Type", "")).lower() or _looks_like_bounce(head)


def parse_bounce(raw: bytes) -> Bounce | None:
    """The bounce `raw` reports, or None when it is not a bounce (or reports no recipient)."""
    try:
        msg = email.message_from_bytes(raw, policy=policy.compat32)
        bounce = _parse(msg)
    except Exception:  # hostile or broken mail: not a bounce we can use
        return None
    if bounce is None or not bounce.recipients:
        return None
    return bounce


def _parse(msg: Message) -> Bounce | None:
    report = _find(msg, "multipart/report")
    if report is not None and str(report.get_param("report-type", "")).lower() == "delivery-status":
        dsn = _parse_dsn(msg, report)
        if dsn is not None and dsn.recipients:
            return dsn
    if not _looks_like_bounce(msg):
        return None
    text = "\n".join(_notification_texts(msg))
    recipients = _text_recipients(text, msg)
    return Bounce("text", recipients, _original_ids(msg, text))


# -- RFC 3464 -----------------------------------------------------------------------------------------------


def _parse_dsn(msg: Message, report: Message) -> Bounce | None:
    status_part = _find(report, "message/delivery-status")
    if status_part is None:
        return None
    blocks = _status_blocks(status_part)
    if not blocks:
        return None
    per_message, per_recipient = blocks[0], blocks[1:]
    if not per_recipient and any(k.lower() in ("final-recipient", "original-recipient") for k in per_message):
        per_message, per_recipient = {}, blocks  # no per-message block at all
    recipients: list[BouncedRecipient] = []
    for fields in per_recipient:
        # Original-Recipient is what the sender wrote (our envelope); Final-Recipient what the MTA tried last
        address = _field_address(fields.get("original-recipient", "")) or _field_address(
            fields.get("final-recipient", "")
        )
        if address is None or any(r.address.lower() == address.lower() for r in recipients):
            continue
        status = _status_of(fields.get("status", ""))
        action = _action(fields.get("action", ""), status)
        diagnostic = _clean(fields.get("diagnostic-code", "")) or None
        remote = _clean(fields.get("remote-mta", "")).partition(";")[2].strip() or None
        recipients.append(BouncedRecipient(address, action, status, diagnostic, remote))
    reporting = _clean(per_message.get("reporting-mta", "")).partition(";")[2].strip() or None
    text = "\n".join(_notification_texts(report))
    return Bounce("dsn", recipients, _original_ids(msg, text, report), reporting)


def _status_blocks(part: Message) -> list[dict[str, str]]:
    """The field blocks of a message/delivery-status part (the email package parses them as sub-messages)."""
    payload = part.get_payload()
    texts: list[str] = []
    if isinstance(payload, list):
        for block in payload:
            if isinstance(block, Message):
                texts.append("".join(f"{k}: {v}\n" for k, v in block.items()))
    elif isinstance(payload, str):
        texts = re.split(r"\r?\n\s*\r?\n", payload)
    blocks: list[dict[str, str]] = []
    for text in texts:
        fields: dict[str, str] = {}
        current = ""
        for line in text.splitlines():
            if line[:1] in (" ", "\t") and current:
                fields[current] += " " + line.strip()
            elif ":" in line:
                name, _, value = line.partition(":")
                current = name.strip().lower()
                fields[current] = value.strip()
        if fields:
            blocks.append(fields)
    return blocks


def _field_address(value: str) -> str | None:
    kind, sep, rest = value.partition(";")
    text = rest if sep else kind
    m = re.search(_ADDR, text)
    return m.group(0) if m else None


def _action(value: str, status: str | None) -> Action:
    word = value.strip().lower().split(" ")[0] if value.strip() else ""
    if word in ("failed", "delayed", "delivered", "relayed", "expanded"):
        return word  # type: ignore[return-value]
    if status and status.startswith("4"):
        return "delayed"
    if status and status.startswith("2"):
        return "delivered"
    return "failed"


# -- plain-text bounces ---------------------------------------------------------------------------------------


def _looks_like_bounce(msg: Message) -> bool:
    sender = " ".join(str(msg.get(h, "")) for h in ("From", "Return-Path", "Sender"))
    subject = str(msg.get("Subject", ""))
    return (
        bool(msg.get("X-Failed-Recipients") or _FROM_DAEMON.search(sender) or _BOUNCE_SUBJECT.search(subject))
        or str(msg.get("Return-Path", "")).strip() == "<>"
    )


def _notification_texts(msg: Message) -> Iterable[str]:
    """The human-readable report: text parts outside any returned message, cut where the copy begins."""
    for part in _walk_outside_returned(msg):
        if part.get_content_maintype() != "text" or part.get_content_type() == "text/rfc822-headers":
            continue
        text = _text(part)
        if part.get_content_subtype() == "html":
            text = re.sub(r"<[^>]+>", " ", text)
        m = _ORIGINAL_MARKERS.search(text)
        yield text[: m.start()] if m else text


def _text_recipients(text: str, msg: Message) -> list[BouncedRecipient]:
    temporary = bool(_TEMPORARY.search(text)) or bool(_TEMPORARY.search(str(msg.get("Subject", ""))))
    found: dict[str, list[str]] = {}
    lines = text.splitlines()
    own = {a.lower() for a in re.findall(_ADDR, " ".join(str(msg.get(h, "")) for h in ("From", "To", "Sender")))}
    for n, line in enumerate(lines):
        for rx in (_SENDMAIL, _ANGLE_LINE, _BARE_LINE):
            m = rx.match(line)
            if m:
                reason = [m.group(2)] if m.lastindex and m.lastindex >= 2 and m.group(2) else []
                found.setdefault(m.group(1), []).extend(reason + _continuation(lines, n))
                break
        else:
            m = _SAID.match(line)
            if m and _REASON_WORDS.search(m.group(2)) and m.group(1).lower() not in own:
                found.setdefault(m.group(1), []).append(m.group(2))
    if not found:
        for address, reason in _listed_addresses(lines):
            if address.lower() not in own:
                found.setdefault(address, []).extend(reason)
    for header in msg.get_all("X-Failed-Recipients") or []:
        for address in re.findall(_ADDR, str(header)):
            found.setdefault(address, [])
    out: list[BouncedRecipient] = []
    seen: set[str] = set()
    for raw_address, reasons in found.items():
        address = _LEAD.sub("", raw_address)
        key = address.lower()
        if key in seen or key in own:
            continue
        seen.add(key)
        diagnostic = _clean(" ".join(reasons))[:1000] or None
        status = _status_of(diagnostic or "") or _status_of(text if len(found) == 1 else "")
        code = _CODE.search(diagnostic or "")
        transient = (status or (code.group(1) if code else "")).startswith("4") or (temporary and not status)
        out.append(BouncedRecipient(address, "delayed" if transient else "failed", status, diagnostic))
    return out


def _listed_addresses(lines: list[str]) -> list[tuple[str, list[str]]]:
    """The generic fallback: addresses on their own or with a reason on lines of the report text that are
    not header lines or SMTP transcript commands (e.g. "> user@x", "Recipient: user@x", "user@x - reason")."""
    out: list[tuple[str, list[str]]] = []
    for n, line in enumerate(lines):
        if _NOT_A_RECIPIENT_LINE.match(line):
            continue
        addresses = re.findall(_ADDR, line)
        if len(addresses) != 1 or _DAEMON_ADDR.search(addresses[0]):
            continue
        rest = _TRIM.sub("", line.replace(addresses[0], " "))
        if len(rest) > 80 and not _REASON_WORDS.search(rest):
            continue  # an address inside prose, not a report line
        out.append((addresses[0], [rest, *_continuation(lines, n)] if rest else _continuation(lines, n)))
    return out


def _continuation(lines: list[str], n: int) -> list[str]:
    """Indented lines after line n (Exim, Postfix and qmail put the reason there), up to a blank line."""
    out: list[str] = []
    for line in lines[n + 1 : n + 12]:
        if not line.strip() or _ANGLE_LINE.match(line) or _BARE_LINE.match(line):
            break
        out.append(line.strip())
        if not line[:1].isspace() and len(out) > 1:
            break
    return out


# -- the original message -----------------------------------------------------------------------------------


def _original_ids(msg: Message, text: str, report: Message | None = None) -> list[str]:
    own = str(msg.get("Message-ID", "")).strip()
    ids: list[str] = []
    for part in (report or msg).walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                ids.append(str(inner[0].get("Message-ID", "")))
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers"):
            headers = email.message_from_string(_text(part).lstrip(), policy=policy.compat32)
            ids.append(str(headers.get("Message-ID", "")))
    whole = msg.as_string() if len(ids) == 0 else ""
    ids.extend(_MSGID_LINE.findall(text))
    ids.extend(m.group(1) for m in _MSGID_LINE.finditer(whole) if m.group(1) != own)
    for header in ("In-Reply-To", "References"):
        ids.extend(_MSGID.findall(str(msg.get(header, ""))))
    out: list[str] = []
    for mid in ids:
        found = _MSGID.search(mid)
        if found and found.group(0) != own and found.group(0) not in out:
            out.append(found.group(0))
    return out


# -- helpers --------------------------------------------------------------------------------------------------


def _find(msg: Message, ctype: str) -> Message | None:
    return next((p for p in msg.walk() if p.get_content_type() == ctype), None)


def _walk_outside_returned(msg: Message) -> Iterable[Message]:
    """Parts of `msg`, not descending into returned messages (message/rfc822)."""
    stack = [msg]
    while stack:
        part = stack.pop(0)
        if part.get_content_type() == "message/rfc822":
            continue
        if part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                stack[0:0] = [p for p in payload if isinstance(p, Message)]
            continue
        yield part


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _status_of(text: str) -> str | None:
    m = _STATUS.search(text)
    return ".".join(m.groups()) if m else None


def _clean(value: str) -> str:
    return re.sub(r"\s+", " ", value).strip()
