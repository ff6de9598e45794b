"""Strings from mail servers made storable on every backend: no NUL (PostgreSQL rejects it in text and
JSON), no lone surrogates (not encodable as UTF-8); each becomes U+FFFD, everything else is kept."""

from __future__ import annotations

from typing import Any


def clean(value: str) -> str:
    """`value` with NUL and unencodable code points replaced by U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
    return value


def clean_json(value: Any) -> Any:
    """`clean` applied to every string (keys too) of a JSON-shaped value."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    if isinstance(value, dict):
        return {clean(str(k)): clean_json(v) for k, v in value.items()}
    return value
