"""Bounded, typed values: texts cut to a few KB for errors, logs and API responses, and decoded records made
JSON-safe whatever bytes they held. One place, used by the executor, the dead letters and the API serialisers."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

MAX_TEXT = 2048  # characters of one value inside an error text, a log line or a displayed record
MAX_REPR = 200  # characters of a value quoted inside a message (an id, a key)
MAX_DEPTH = 32  # nesting kept when a record is displayed
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # integers a job payload may hold (msgpack and Lua read them exactly)


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def brief(value: Any, limit: int = MAX_REPR) -> str:
    """The repr of ``value`` for a message, cut to ``limit`` characters (a 10 MB id stays a short text)."""
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} {'characters' if isinstance(value, str) else 'bytes'})"
    return clip(repr(value), limit)


def text_of(value: Any, limit: int = MAX_TEXT) -> str:
    """Any stored value as a bounded text: bytes decoded with escapes for what is not UTF-8."""
    if isinstance(value, bytes):
        value = value[: limit * 4].decode("utf-8", "backslashreplace")
    elif not isinstance(value, str):
        value = repr(value)
    return clip(value, limit)


def displayable(value: Any, limit: int = MAX_TEXT, depth: int = 0) -> Any:
    """A copy of a decoded record that any JSON encoder takes: bytes become escaped text, keys texts,
    non-finite floats None, long strings and lists are cut, deep nesting is summarised."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return clip(value, limit)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= MAX_DEPTH:
        return "(nested too deep)"
    if isinstance(value, dict):
        items = list(value.items())[:limit]
        return {text_of(k, MAX_REPR): displayable(v, limit, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [displayable(v, limit, depth + 1) for v in value[:limit]]
    return text_of(value, limit)


def check_json(value: Any, depth: int = 0) -> None:
    """Raise ValueError unless ``value`` is plain JSON data with string keys, finite floats and 64-bit ints
    (what a job payload may hold: it is read back by other processes and shown by the API)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return
    if kind is int:
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError(f"integer {brief(value, 40)} is out of the 64-bit range a payload may hold")
        return
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a JSON number")
        return
    if depth >= MAX_DEPTH:
        raise ValueError(f"payload nested deeper than {MAX_DEPTH} levels")
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise ValueError(f"payload keys must be strings, not {type(k).__name__} ({brief(k, 40)})")
            t = type(v)  # the common scalars inline: this runs on every enqueue
            if t is str or v is None or t is bool or (t is float and v - v == 0.0):  # finite: inf - inf is nan
                continue
            if t is not int or not INT_MIN <= v <= INT_MAX:
                check_json(v, depth + 1)
        return
    if kind is list or kind is tuple:
        for v in value:
            if type(v) is not str:
                check_json(v, depth + 1)
        return
    if isinstance(value, str):  # a str subclass (StrEnum)
        return
    if isinstance(value, int):  # an int subclass (IntEnum)
        check_json(int(value), depth)
        return
    raise ValueError(f"a payload holds JSON data only, not {kind.__name__}")


def epoch_datetime(text: str | None) -> dt.datetime | None:
    """A time stored as epoch seconds in text (a Redis hash field); None when missing or unusable (any process,
    or a person, may have written it: a non-number, NaN, or far outside the datetime range)."""
    if not text:
        return None
    try:
        return dt.datetime.fromtimestamp(float(text), dt.UTC)
    except (OverflowError, ValueError, OSError):
        return None
