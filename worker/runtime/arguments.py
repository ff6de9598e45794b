"""Checks of the arguments of ``Client.enqueue`` and friends: each bad one raises ValueError before anything
is written (never a msgpack ``TypeError``, an ``OverflowError`` or a Redis ``ResponseError`` later)."""

from __future__ import annotations

import datetime as dt
import functools
import math
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from worker.runtime import keys
from worker.runtime.bounded import INT_MAX, INT_MIN, brief, check_json

MAX_KEY = 1000  # characters of an idempotency key
MAX_JOB_ID = 200  # characters of a caller-chosen job id
MAX_FUNCTION = 200


def function_name(function: Any) -> str:
    if not isinstance(function, str) or not 0 < len(function) <= MAX_FUNCTION:
        raise ValueError(f"function must be a job name (1..{MAX_FUNCTION} characters), not {brief(function)}")
    return function


def priority(value: Any) -> int:
    """0..MAX_PRIORITY; a bool is not a priority."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= keys.MAX_PRIORITY:
        raise ValueError(f"priority must be an integer 0..{keys.MAX_PRIORITY}, not {brief(value, 40)}")
    return value


def idempotency_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_KEY:
        raise ValueError(f"idempotency_key must be a string of 1..{MAX_KEY} characters, not {brief(value, 40)}")
    return value


def job_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_JOB_ID or not value.isprintable():
        raise ValueError(f"job_id must be a printable string of 1..{MAX_JOB_ID} characters, not {brief(value, 40)}")
    return value


def when(defer_by: Any, defer_until: Any, horizon_s: float) -> tuple[int, int]:
    """(absolute run-at ms or -1, delay ms) for enqueue.lua; relative times are resolved on Redis's clock.

    ``defer_by`` is finite seconds (or a timedelta) within ``horizon_s``; ``defer_until`` an aware datetime no
    further ahead than that (an earlier one, down to the Unix epoch, runs now)."""
    if defer_by is not None and defer_until is not None:
        raise ValueError("use either defer_by or defer_until, not both")
    if defer_until is not None:
        if not isinstance(defer_until, dt.datetime):
            raise ValueError(f"defer_until must be a datetime, not {type(defer_until).__name__}")
        if defer_until.tzinfo is None:
            raise ValueError("defer_until must be timezone-aware (UTC inside)")
        try:
            at = defer_until.timestamp()
        except (OverflowError, ValueError, OSError) as exc:
            raise ValueError(f"defer_until {brief(defer_until, 60)} is out of range") from exc
        if at < 0 or at > time.time() + horizon_s:
            raise ValueError(f"defer_until must be after 1970 and at most {horizon_s:g} s ahead (SCHEDULE_HORIZON_S)")
        return int(at * 1000), 0
    if defer_by is not None:
        if isinstance(defer_by, dt.timedelta):
            seconds = defer_by.total_seconds()
        elif isinstance(defer_by, int | float) and not isinstance(defer_by, bool):
            seconds = float(defer_by) if abs(defer_by) < 1e300 else math.inf
        else:
            raise ValueError(f"defer_by must be seconds (a number) or a timedelta, not {type(defer_by).__name__}")
        if not 0 <= seconds <= horizon_s:  # NaN fails too
            raise ValueError(f"defer_by must be 0..{horizon_s:g} s (SCHEDULE_HORIZON_S), not {brief(defer_by, 40)}")
        return -1, int(seconds * 1000)
    return -1, 0


_TEXTS: frozenset[Any] = frozenset({str, bool, str | None, bool | None})
_INTS: frozenset[Any] = frozenset({int, int | None})
_FLOATS: frozenset[Any] = frozenset({float, float | None})


@functools.cache
def _scalar_fields(model: type[BaseModel]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(int fields, float fields) of a model whose fields are all plain scalars and that takes no extra
    fields, else None: its JSON dump then needs only those fields checked."""
    if model.model_config.get("extra") == "allow":
        return None
    ints, floats = [], []
    for name, f in model.model_fields.items():
        if f.alias or f.serialization_alias:  # dumped under another key: take the general walk
            return None
        if f.annotation in _INTS:
            ints.append(name)
        elif f.annotation in _FLOATS:
            floats.append(name)
        elif f.annotation not in _TEXTS:
            return None
    return tuple(ints), tuple(floats)


@functools.cache
def checker(model: type[BaseModel]) -> Callable[[dict[str, Any]], None] | None:
    """What a model's JSON dump still needs checked to be plain JSON data (64-bit ints, finite floats, ...), or
    None when nothing does (string and bool fields only): its int and float fields for flat models, else the
    full ``check_json`` walk. Raises ValueError."""
    plan = _scalar_fields(model)
    if plan is None:
        return check_json
    ints, floats = plan
    if not ints and not floats:
        return None

    def check(dumped: dict[str, Any]) -> None:
        for name in ints:
            v = dumped.get(name)
            if v is not None and not INT_MIN <= v <= INT_MAX:
                raise ValueError(f"{name}: integer {brief(v, 40)} is out of the 64-bit range a payload may hold")
        for name in floats:
            v = dumped.get(name)
            if v is not None and v - v != 0.0:  # inf - inf and nan - nan are nan
                raise ValueError(f"{name}: {v} is not a JSON number")

    return check


@functools.cache
def dumper(model: type[BaseModel]) -> Callable[[Any], dict[str, Any]]:
    """payload (an instance, a dict or None) -> the model's validated JSON dump, checked: one closure per model,
    built once, since it runs for every enqueued job (pydantic-core's validator and serializer directly: half
    the cost of model_validate + model_dump). Raises ValidationError or ValueError."""
    validate = model.__pydantic_validator__.validate_python
    to_python = model.__pydantic_serializer__.to_python
    check = checker(model)

    def dump(payload: Any) -> dict[str, Any]:
        out: dict[str, Any] = to_python(payload if isinstance(payload, model) else validate(payload or {}), mode="json")
        if check is not None:
            check(out)
        return out

    return dump
