"""The long-running watch service: `worker watch` alone, or inside `worker run` next to the email-sync queue.

Three loops over one Fleet: the scan (leases, every `watch_scan_s`), the reconcile (accounts, every
`watch_reconcile_s` or at once on a `wt:notify` message) and the notification listener. `stop()` closes every
watch connection and releases every lease at once, so the rest of the fleet takes over within a scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from settings import Settings
from worker.runtime import Client, Worker
from worker.runtime.connection import CONNECT_TIMEOUT_S, connect, is_sentinel
from worker.store import SqlStore, open_store
from worker.watch import keys
from worker.watch.fleet import Fleet
from worker.watch.lease import Leases
from worker.watch.limits import HostRate
from worker.watch.watcher import WatchContext

log = logging.getLogger(__name__)
MAX_REDIS_CONNECTIONS = 16
KEY_TTL_FACTOR = 12  # lease keys and state records outlive a lease by this much (then a dead watch is forgotten)


def _connect(url: str) -> Redis:
    """A client whose pool blocks at MAX_REDIS_CONNECTIONS: thousands of watchers share a few connections."""
    if is_sentinel(url):
        return connect(url, max_connections=MAX_REDIS_CONNECTIONS)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=MAX_REDIS_CONNECTIONS, timeout=None, socket_connect_timeout=CONNECT_TIMEOUT_S
    )
    return Redis.from_pool(pool)


class WatchService:
    """Runs this process's share of the fleet's watches until stopped."""

    def __init__(self, redis_url: str, settings: Settings, *, store: SqlStore | None = None) -> None:
        self.settings = settings
        self.redis: Redis = _connect(redis_url)
        self._own_store = store is None
        self.store = store or open_store(settings)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        ttl = settings.watch_lease_ms
        self.ctx = WatchContext(
            redis=self.redis,
            store=self.store,
            client=Client(self.redis, settings),
            settings=settings,
            leases=Leases(self.redis, self.owner, ttl, max(60_000, ttl * KEY_TTL_FACTOR)),
            host_rate=HostRate(self.redis, settings.watch_connect_rate, settings.watch_connect_burst),
            owner=self.owner,
        )
        self.fleet = Fleet(self.ctx)
        self._changed = asyncio.Event()
        self._scan_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._reconcile_loop(), name="watch:reconcile"),
            asyncio.create_task(self._scan_loop(), name="watch:scan"),
            asyncio.create_task(self._listen(), name="watch:notify"),
        ]
        log.info("watch service %s started", self.owner)

    async def stop(self) -> None:
        """Close every watch connection and release every lease now."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.fleet.stop_all()
        await self.redis.aclose()
        if self._own_store:
            await self.store.aclose()

    def changed(self) -> None:
        """Accounts changed (also what a `wt:notify` message does)."""
        self._changed.set()

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.fleet.reconcile()
                self.fleet.wake_all()
                self._scan_now.set()
            except Exception as exc:  # the store or Redis is away: keep what we have, try again
                log.warning("watch reconcile failed: %s", exc)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.watch_reconcile_s):
                    await self._changed.wait()

    async def _scan_loop(self) -> None:
        await self.fleet.ready.wait()
        while True:
            try:
                await self.fleet.scan()
            except (RedisError, OSError) as exc:
                log.warning("watch scan failed: %s", exc)
            except Exception:
                log.exception("watch scan failed")
            self._scan_now.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.watch_scan_s):
                    await self._scan_now.wait()

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as ps:
                    await ps.subscribe(keys.NOTIFY)
                    async for message in ps.listen():
                        if message.get("type") == "message":
                            self.changed()
            except (RedisError, OSError) as exc:
                log.debug("watch notifications: %s", exc)
                await asyncio.sleep(1.0)


async def run_watch_service(redis_url: str, settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the watch service until `stop` is set (default: until SIGTERM/SIGINT)."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    service = WatchService(redis_url, settings)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()


async def run_worker_with_watchers(worker: Worker, redis_url: str, settings: Settings) -> None:
    """`worker run`: the worker's queues and the watch service in one process; SIGTERM releases the watches at
    once while running jobs get their grace period."""
    stop = asyncio.Event()
    watching = asyncio.create_task(run_watch_service(redis_url, settings, stop))
    try:
        await worker.run_forever(on_signal=stop.set)
    finally:
        stop.set()
        await watching
