"""From server pushes to sync jobs: debounced, so a burst of 50 arrivals becomes one or two `sync_mailbox` jobs.

Leading and trailing edge: the first change enqueues a sync at once; changes within `window` seconds of it are
folded into one more sync at the end of the window. The oldest unsynced change's time is kept in Redis
(`wt:arrived:<watch>`, set-if-absent): the sync job takes it when it starts and reports the arrival -> stored
latency in its `watch_stored` event (the API's histogram).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.runtime import Client, keys
from worker.watch import keys as wkeys

log = logging.getLogger(__name__)
STORED_EVENT = "watch_stored"


class Debouncer:
    """Calls `fire` at most once per `window` seconds, and once more after the last poke of a burst."""

    __slots__ = ("_last", "_task", "dirty", "fire", "window")

    def __init__(self, fire: Callable[[], Awaitable[None]], window: float) -> None:
        self.fire = fire
        self.window = window
        self.dirty = False
        self._last = -1e9
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        """A change was seen."""
        self.dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.dirty:
            wait = self._last + self.window - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.dirty = False
            self._last = loop.time()
            try:
                await self.fire()
            except (RedisError, OSError) as exc:  # the periodic sync reconciles; the next change retries
                log.warning("could not enqueue a sync: %s", exc)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


class SyncTrigger:
    """Enqueues the sync of one watched mailbox, and marks when its first unsynced change arrived."""

    __slots__ = ("client", "payload", "redis", "wid")

    def __init__(self, redis: Redis, client: Client, wid: str, tenant_id: str, account_id: str, mailbox: str):
        self.redis = redis
        self.client = client
        self.wid = wid
        self.payload = {"tenant_id": tenant_id, "account_id": account_id, "mailbox": mailbox}

    async def mark(self, at: float) -> None:
        await self.redis.set(wkeys.arrived(self.wid), f"{at:.6f}", nx=True, ex=3600)

    async def __call__(self) -> None:
        await self.client.enqueue("sync_mailbox", self.payload)


async def take_arrival(redis: Redis, tenant_id: str, account_id: str, mailbox: str) -> float | None:
    """For the sync job, as it starts: the time of the oldest change it will pick up (and forget it)."""
    value = await redis.getdel(wkeys.arrived(wkeys.watch_id(tenant_id, account_id, mailbox)))
    return float(value) if value else None


async def report_stored(redis: Redis, arrived: float, tenant_id: str, account_id: str, new: int, maxlen: int) -> float:
    """Emit the `watch_stored` event (arrival -> stored latency); returns the latency in seconds."""
    latency = max(0.0, time.time() - arrived)
    fields = {
        "type": STORED_EVENT,
        "job_id": "",
        "tenant_id": tenant_id,
        "account_id": account_id,
        "new": str(new),
        "latency_s": f"{latency:.4f}",
    }
    await redis.xadd(keys.EVENTS, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
    return latency


async def remember_folders(redis: Redis, tenant_id: str, account_id: str, folders: list[str], every_s: float) -> None:
    """For sync_account, after discovery: the folders to watch besides INBOX (kept for three sync rounds)."""
    await redis.set(wkeys.folders(tenant_id, account_id), json.dumps(folders), ex=max(60, int(every_s * 3)))
