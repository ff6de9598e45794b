"""msgpack job/result serializer: no pickle anywhere, so a Redis write can never execute code on a worker."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgpack
from pydantic import BaseModel


class PayloadError(ValueError):
    """Raised when bytes read from Redis are not a valid msgpack document."""


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, dt.datetime | dt.date):
        return obj.isoformat()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def pack(obj: Any) -> bytes:
    """Serialize plain data (plus pydantic models, datetimes, exceptions) to msgpack."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)  # type: ignore[no-any-return]


def map_prefix(head: dict[str, Any], last_key: str) -> bytes:
    """msgpack of a map of ``head`` plus ``last_key`` without the last value: ``prefix + pack(value)`` is the
    whole map. Packs the shared part of many records once (at most 14 entries in ``head``)."""
    if len(head) > 14:
        raise ValueError("map_prefix takes at most 14 entries")
    return bytes([0x80 | (len(head) + 1)]) + pack(head)[1:] + pack(last_key)


def pack_for_lua(obj: Any) -> bytes:
    """msgpack for a script argument: Redis's Lua cmsgpack knows no bin type, and Lua strings are bytes anyway."""
    return msgpack.packb(obj, use_bin_type=False)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    """Deserialize msgpack bytes; anything else (pickle, junk, trailing bytes) raises PayloadError."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise PayloadError(f"payload is not valid msgpack ({type(exc).__name__}: {exc})") from exc
