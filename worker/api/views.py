"""Read models shared by the API, the dashboard and the CLI: a job's full picture, secrets redacted."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from worker.api.deps import job_tenant
from worker.runtime import Client, DeadLetters, JobStatus, keys
from worker.runtime.bounded import clip, displayable
from worker.runtime.serializer import PayloadError, unpack

SECRET_FIELD = re.compile(r"pass|secret|token|api_?key|authorization|credential|cookie", re.IGNORECASE)
EVENT_SCAN = 5000  # newest events searched for one job's history


def redact(value: Any) -> Any:
    """A copy of ``value`` with the values of secret-looking keys replaced (at any depth)."""
    return _redact(displayable(value))


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "***" if isinstance(k, str) and SECRET_FIELD.search(k) else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


class EventView(BaseModel):
    id: str
    at: dt.datetime
    type: str
    job_id: str | None = None
    function: str | None = None
    queue: str | None = None
    fields: dict[str, Any] = {}


def decode_fields(fields: dict[bytes, bytes]) -> dict[str, str]:
    """A stream entry's fields as texts, whatever bytes a producer wrote (cut to a few KB each)."""
    return {k.decode("utf-8", "replace"): clip(v.decode("utf-8", "replace")) for k, v in fields.items()}


def event_view(event_id: str, fields: dict[str, str]) -> EventView:
    """Typed view of one stream entry: progress decoded from JSON, attempt as a number, run_at as a time."""
    extra: dict[str, Any] = {k: v for k, v in fields.items() if k not in ("type", "job_id", "function", "queue")}
    if "progress" in extra:
        with contextlib.suppress(ValueError):
            extra["progress"] = json.loads(extra["progress"])
    if extra.get("attempt", "").isdigit():
        extra["attempt"] = int(extra["attempt"])
    for name in ("run_at", "ms"):  # epoch milliseconds
        if extra.get(name, "").isdigit():
            extra[name] = dt.datetime.fromtimestamp(int(extra[name]) / 1000, tz=dt.UTC).isoformat()
    at = dt.datetime.fromtimestamp(int(event_id.split("-")[0]) / 1000, tz=dt.UTC)
    return EventView(
        id=event_id,
        at=at,
        type=fields.get("type", "?"),
        job_id=fields.get("job_id"),
        function=fields.get("function"),
        queue=fields.get("queue"),
        fields=extra,
    )


class JobView(JobStatus):
    """A job's status plus its (redacted) payload, owner, and for dead jobs the traceback."""

    tenant_id: str | None = None
    payload: dict[str, Any] | None = None
    traceback: str | None = None
    events: list[EventView] | None = None


async def job_payload(redis: Redis, job_id: str) -> dict[str, Any] | None:
    """The job's kwargs from its queued record, its result record or its dead letter."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(keys.job(job_id))
        pipe.get(keys.result(job_id))
        pipe.get(keys.dead_letter(job_id))
        raws = await pipe.execute()
    for raw in raws:
        if not raw:
            continue
        try:
            doc = unpack(raw)
        except PayloadError:
            continue
        if isinstance(doc, dict):
            kwargs = doc.get("k", doc.get("payload"))
            if isinstance(kwargs, dict):
                return kwargs
    return None


async def job_events(redis: Redis, job_id: str) -> list[EventView]:
    """This job's events among the newest EVENT_SCAN of the stream, oldest first."""
    raw = await redis.xrevrange(keys.EVENTS, count=EVENT_SCAN)
    out = []
    for eid, fields in reversed(raw):
        decoded = decode_fields(fields)
        if decoded.get("job_id") == job_id:
            out.append(event_view(eid.decode(), decoded))
    return out


async def job_view(client: Client, job_id: str, *, detail: bool = False) -> JobView:
    """Everything known about one job; ``detail`` adds the traceback and event history."""
    st = await client.status(job_id)
    kwargs = await job_payload(client.redis, job_id)
    data = st.model_dump()
    data["result"] = displayable(st.result)
    data["error"] = clip(st.error) if st.error is not None else None
    view = JobView(
        **data,
        tenant_id=await job_tenant(client.redis, job_id, kwargs),
        payload=redact(kwargs) if kwargs is not None else None,
    )
    if detail:
        entry = await DeadLetters(client.redis, client).get(job_id)
        if entry is not None:
            view.traceback = clip(entry.traceback, 8000) or None
            view.error = view.error or clip(entry.error)
            view.function, view.queue = view.function or entry.function, view.queue or entry.queue
        view.events = await job_events(client.redis, job_id)
    return view
