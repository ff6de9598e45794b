"""Turning bytes from a mail server into text that always encodes: no lone surrogates, no NUL.

Python's email package decodes 8-bit header bytes as ASCII with `surrogateescape`, and an encoded word in
an unknown charset the same way, so its strings can carry lone surrogates (U+DC80..U+DCFF) that fail to
encode anywhere downstream (JSON, SQL, HTTP). Everything taken from a fetched message goes through
`clean` or `decode_bytes`:

1. UTF-8 (RFC 6532 allows raw UTF-8 in headers; it is also the commonest undeclared body charset);
2. else the declared charset (a body's `charset=`, or the message's for raw 8-bit headers) if it decodes;
3. else the charset that charset-normalizer detects;
4. else UTF-8 with U+FFFD replacement characters.

NUL (PostgreSQL rejects it in text) becomes U+FFFD as well.
"""

from __future__ import annotations

import codecs
import re

from charset_normalizer import from_bytes

DETECT_LIMIT = 64 * 1024  # bytes given to the charset detector
DETECT_MIN = 12  # shorter input is noise to a detector: decoded with replacement characters instead
_PREFERRED = ("cp1252", "iso8859_15", "latin_1")
_EBCDIC = frozenset({"cp037", "cp273", "cp424", "cp500", "cp875", "cp1026", "cp1140"})  # never mail charsets
# Codecs that are not charsets of text: their output is not a decoding of mail (and may carry surrogates).
_NOT_CHARSETS = frozenset(
    {"unicode_escape", "raw_unicode_escape", "idna", "punycode", "undefined", "mbcs", "oem", "palmos"}
)
_SURROGATE = re.compile("[\ud800-\udfff]")
NOT_ESCAPE = re.compile("[\ud800-\udc7f\udd00-\udfff]")  # surrogates that are not surrogateescape'd bytes


def charset_codec(name: str | None) -> str | None:
    """The Python codec of a MIME charset name, or None when it is unknown or not a text charset."""
    if not name:
        return None
    try:
        info = codecs.lookup(name.strip().strip('"').lower())
    except (LookupError, ValueError, TypeError):
        return None
    if info.name.replace("-", "_") in _NOT_CHARSETS or not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def detect(data: bytes) -> str | None:
    """The charset charset-normalizer finds for `data` (its first DETECT_LIMIT bytes), or None."""
    if len(data) < DETECT_MIN:
        return None
    try:
        matches = list(from_bytes(data[:DETECT_LIMIT]))
    except Exception:  # the detector must never take a sync down
        return None
    best = matches[0] if matches else None
    if best is not None:  # on a tie, the commonest legacy charset of mail wins (short text often ties)
        tied = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
        best = next((m for m in tied if m.encoding in _PREFERRED), best)
    if best is None or (best.encoding.startswith(("utf_16", "utf_32")) and b"\x00" not in data):
        return None  # a UTF-16/32 guess for NUL-free 8-bit text is a misreading
    codec = charset_codec(best.encoding)
    return None if codec in _EBCDIC else codec


def _strip_nul(text: str) -> str:
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def decode_bytes(data: bytes, declared: str | None = None) -> str:
    """`data` as text: UTF-8, else the declared charset, else a detected one, else UTF-8 with U+FFFD."""
    try:
        return _strip_nul(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    for codec in (charset_codec(declared), detect(data)):
        if codec is None or codec == "utf-8":
            continue
        try:
            text = data.decode(codec)
        except (UnicodeDecodeError, LookupError, ValueError):
            continue
        if not _SURROGATE.search(text):
            return _strip_nul(text)
    return _strip_nul(data.decode("utf-8", "replace"))


def clean(text: str, declared: str | None = None) -> str:
    """`text` (possibly carrying surrogateescape'd bytes) as a string that always encodes to UTF-8."""
    if _SURROGATE.search(text):
        text = NOT_ESCAPE.sub("\ufffd", text)
        return decode_bytes(text.encode("utf-8", "surrogateescape"), declared)
    return _strip_nul(text)


def is_clean(text: str) -> bool:
    """True when `text` encodes to UTF-8 and has no NUL (what `clean` guarantees)."""
    return "\x00" not in text and not _SURROGATE.search(text)
