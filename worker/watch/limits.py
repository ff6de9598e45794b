"""Politeness at scale: connection attempts per IMAP host rate limited across the fleet, reconnect backoff.

The host limit is the runtime's GCRA script on `wt:rate:<host>`: every process of the fleet takes a token
before each connection attempt (successful or not), so a server restart with 1,000 watched mailboxes becomes
a steady stream of logins at the configured rate, never a stampede.
"""

from __future__ import annotations

import asyncio
import random

from redis.asyncio import Redis

from worker.runtime.scripts import source
from worker.watch import keys


class HostRate:
    """At most `rate` connection attempts per second per IMAP host (burst `burst`), all processes together."""

    def __init__(self, redis: Redis, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._script = redis.register_script(source("ratelimit"))
        self._turns: dict[str, asyncio.Lock] = {}  # one waiter per host per process asks Redis; the rest queue

    async def wait_ms(self, host: str) -> int:
        """Take a token for `host`: 0 when taken, else the milliseconds until one is free (nothing taken)."""
        return int(await self._script(keys=[keys.host_rate(host)], args=[self.rate, 1000, self.burst]))

    async def take(self, host: str) -> None:
        """Wait until a connection attempt to `host` is allowed (FIFO among this process's watchers: with
        thousands waiting, Redis sees one request per free token, not one per waiter)."""
        turn = self._turns.setdefault(host.lower(), asyncio.Lock())
        async with turn:
            while True:
                ms = await self.wait_ms(host)
                if ms <= 0:
                    return
                await asyncio.sleep(ms / 1000 * (1 + random.random() * 0.1))


class Backoff:
    """Exponential reconnect delay with full jitter, per watch; reset once a connection has held a while."""

    __slots__ = ("attempts", "base", "cap")

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt: uniform in [d/2, d], d = base * 2^attempts (capped)."""
        ceiling = min(self.cap, self.base * float(2 ** min(self.attempts, 30)))
        self.attempts += 1
        return ceiling / 2 + random.random() * ceiling / 2

    def reset(self) -> None:
        self.attempts = 0
