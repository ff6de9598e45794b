"""What a job function gets besides its payload."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from settings import Settings
from worker.runtime import keys

if TYPE_CHECKING:
    from worker.runtime.client import Client, Enqueued


@dataclass(slots=True)
class JobContext:
    """Per-execution context: identity, attempt, shared worker state, progress reporting, follow-up enqueue."""

    redis: Redis
    client: Client
    settings: Settings
    job_id: str
    function: str
    queue: str
    attempt: int
    max_attempts: int
    state: dict[str, Any] = field(default_factory=dict)  # per-process cache; values with aclose() closed at stop

    async def progress(self, value: int | float | dict[str, Any]) -> None:
        """Report progress: a number 0..100 or a small JSON-able dict; stored on the job and emitted as an event."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = max(0.0, min(100.0, float(value)))
        elif not isinstance(value, dict):
            raise TypeError("progress must be a number 0..100 or a dict")
        encoded = json.dumps(value, separators=(",", ":"), default=str)
        if len(encoded) > 2048:
            raise ValueError("progress dict is too large (max 2 KiB as JSON)")
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.info(self.job_id), "p", encoded)
            pipe.xadd(
                keys.EVENTS,
                {
                    "type": "progress",
                    "job_id": self.job_id,
                    "function": self.function,
                    "queue": self.queue,
                    "progress": encoded,
                },
                maxlen=self.settings.events_maxlen,
                approximate=True,
            )
            await pipe.execute()

    async def enqueue(self, function: str, payload: dict[str, Any] | None = None, **options: Any) -> Enqueued:
        """Enqueue follow-up work (same options as Client.enqueue)."""
        return await self.client.enqueue(function, payload, **options)
