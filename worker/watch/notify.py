"""Telling the watch fleet that accounts changed (from the API), so watches start and stop within seconds."""

from __future__ import annotations

import contextlib

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.watch import keys


async def notify_accounts_changed(redis: Redis) -> None:
    """Accounts were added, enabled, disabled, removed or given new credentials (best effort: the watch
    processes also re-read the accounts every `watch_reconcile_s`)."""
    with contextlib.suppress(RedisError, OSError):
        await redis.publish(keys.NOTIFY, b"accounts")
