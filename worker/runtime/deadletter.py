"""The dead-letter queue: jobs that failed permanently or exhausted their attempts, with everything needed
to understand and re-run them. Nothing the runtime fails is dropped without an entry here."""

from __future__ import annotations

import builtins
import datetime as dt
from typing import Any

from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from worker.runtime import keys
from worker.runtime.bounded import displayable, text_of
from worker.runtime.client import Client, Enqueued
from worker.runtime.serializer import PayloadError, unpack


class DeadLetter(BaseModel):
    """One dead-lettered job."""

    job_id: str
    function: str
    queue: str
    payload: dict[str, Any] | None = None
    args: list[Any] | None = None
    priority: int = 0
    idempotency_key: str | None = None
    error: str
    traceback: str = ""
    attempts: int = 0
    enqueued_at: dt.datetime | None = None
    failed_at: dt.datetime
    raw: str | None = None  # hex of an undeserializable payload (truncated)


def _entry(job_id: str, raw: bytes) -> DeadLetter:
    """The entry as stored; one that cannot be read (hand-written, truncated) is shown as such, never raises."""
    try:
        d = unpack(raw)
        if not isinstance(d, dict):
            raise PayloadError("not a map")
        for f in ("enqueued_at", "failed_at"):
            if d.get(f):
                d[f] = dt.datetime.fromtimestamp(d[f] / 1000, tz=dt.UTC)
        payload = d.get("payload")
        if isinstance(payload, dict) and any(type(k) is not str for k in payload):  # an arbitrary producer's
            d["payload"] = displayable(payload)  # shown with its keys as texts (it could not be retried as it is)
        return DeadLetter.model_validate(d)
    except (PayloadError, ValidationError, TypeError, ValueError, OverflowError) as exc:
        return DeadLetter(
            job_id=job_id,
            function="<unknown>",
            queue="",
            error=f"unreadable dead-letter entry: {text_of(exc, 500)}",
            failed_at=dt.datetime.fromtimestamp(0, tz=dt.UTC),
            raw=raw[:4096].hex(),
        )


class DeadLetters:
    """List, inspect, retry (re-enqueue) and purge dead letters."""

    def __init__(self, redis: Redis, client: Client | None = None) -> None:
        self.redis = redis
        self.client = client or Client(redis)

    async def count(self) -> int:
        return int(await self.redis.zcard(keys.DEAD_LETTERS))

    async def list(self, offset: int = 0, limit: int = 50, queue: str | None = None) -> list[DeadLetter]:
        """Newest first."""
        ids = await self.redis.zrevrange(keys.DEAD_LETTERS, offset, offset + limit - 1)
        if not ids:
            return []
        names = [i.decode("utf-8", "replace") for i in ids]
        raws = await self.redis.mget([keys.dead_letter("").encode() + i for i in ids])  # ids as stored (bytes)
        entries = [_entry(n, r) for n, r in zip(names, raws, strict=True) if r]
        return [e for e in entries if queue is None or e.queue == queue]

    async def get(self, job_id: str) -> DeadLetter | None:
        raw = await self.redis.get(keys.dead_letter(job_id))
        return _entry(job_id, raw) if raw else None

    async def retry(self, job_id: str) -> Enqueued:
        """Re-enqueue a dead letter as a new job (same function, payload, priority, idempotency key).

        Raises KeyError if there is no such entry, ValueError if it can never run (e.g. undeserializable).
        """
        entry = await self.get(job_id)
        if entry is None:
            raise KeyError(job_id)
        if entry.raw is not None or entry.payload is None:
            raise ValueError("this dead letter has no decodable payload; it cannot be retried")
        enq = await self.client.enqueue(
            entry.function, entry.payload, priority=entry.priority, idempotency_key=entry.idempotency_key
        )
        await self._remove([job_id])
        return enq

    async def purge(self, job_ids: builtins.list[str] | None = None, older_than: dt.datetime | None = None) -> int:
        """Delete the given entries, those older than a time, or all. Returns how many were deleted."""
        if job_ids is None:
            hi = "+inf" if older_than is None else int(older_than.timestamp() * 1000)
            job_ids = [i.decode() for i in await self.redis.zrangebyscore(keys.DEAD_LETTERS, "-inf", hi)]
        return await self._remove(job_ids)

    async def _remove(self, job_ids: builtins.list[str]) -> int:
        if not job_ids:
            return 0
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.DEAD_LETTERS, *job_ids)
            pipe.delete(*[keys.dead_letter(i) for i in job_ids])
            removed, _ = await pipe.execute()
        return int(removed)
