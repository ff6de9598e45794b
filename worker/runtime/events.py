"""The event stream: a capped Redis stream (rt:events) of job lifecycle events a monitor can follow and resume."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from worker.runtime import keys

Event = tuple[str, dict[str, str]]


def _decode(entries: list[Any]) -> list[Event]:
    return [(eid.decode(), {k.decode(): v.decode() for k, v in fields.items()}) for eid, fields in entries]


class Events:
    """Read or follow lifecycle events: enqueued, started, progress, retrying, deferred, requeued, stalled,
    completed, dead, cancelled, rescheduled, journal_replayed (and the product's: outbox, watch_stored,
    account_auth_error)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def read(self, last_id: str = "0", count: int = 100) -> list[Event]:
        """Events after ``last_id`` (exclusive), oldest first."""
        res = await self.redis.xread({keys.EVENTS: last_id}, count=count)
        return _decode(res[0][1]) if res else []

    async def latest(self, count: int = 50) -> list[Event]:
        """The newest ``count`` events, oldest first."""
        return list(reversed(_decode(await self.redis.xrevrange(keys.EVENTS, count=count))))

    async def follow(self, last_id: str = "$", block_ms: int = 5000) -> AsyncIterator[Event]:
        """Yield events as they arrive, forever (resume by passing the last id seen)."""
        while True:
            res = await self.redis.xread({keys.EVENTS: last_id}, count=500, block=block_ms)
            for eid, fields in _decode(res[0][1]) if res else []:
                last_id = eid
                yield eid, fields
