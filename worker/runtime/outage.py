"""Redis outages as one process sees them: quiet logging and the retry pace of everything that talks to Redis.

While Redis is unreachable every loop of a worker (claims, finishes, heartbeats, the wake-up wait) and the API's
background tasks keep retrying. Instead of a traceback per failed call, an ``Outage`` logs one warning when Redis
stops answering, a reminder every ``remind_s`` while it stays down and one line when it answers again; callers
sleep ``retry_delay()`` between attempts (fast at first, then at most ``cap_s``, so work resumes within about
``cap_s`` of Redis coming back).
"""

from __future__ import annotations

import logging
import random
import time

log = logging.getLogger("worker.runtime")
MAX_ERROR_CHARS = 300


class Outage:
    """Whether Redis answers, for one process (see the module docstring)."""

    def __init__(self, *, remind_s: float = 30.0, base_s: float = 0.05, cap_s: float = 0.5) -> None:
        self.remind_s, self.base_s, self.cap_s = remind_s, base_s, cap_s
        self.down_since: float | None = None  # monotonic time of the first failure of the current outage
        self.connected_at: float | None = None  # monotonic time of the first answer, or the last after an outage
        self.outages = 0
        self._reminded = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException, what: str) -> None:
        """A call to Redis failed: warn on the first failure of an outage, remind every ``remind_s``."""
        now = time.monotonic()
        text = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        if self.down_since is None:
            self.down_since = self._reminded = now
            self.outages += 1
            log.warning("Redis unreachable (%s failed: %s); retrying until it answers", what, text)
        elif now - self._reminded >= self.remind_s:
            self._reminded = now
            log.warning("Redis still unreachable after %.0fs (%s)", now - self.down_since, text)

    def ok(self) -> None:
        """A call to Redis succeeded (cheap when nothing was wrong: called on the hot path)."""
        if self.down_since is not None:
            now = time.monotonic()
            log.warning("Redis reachable again after %.1fs", now - self.down_since)
            self.down_since = None
            self.connected_at = now
        elif self.connected_at is None:
            self.connected_at = time.monotonic()

    def retry_delay(self) -> float:
        """Seconds to wait before the next attempt: grows with the outage's age, at most ``cap_s``, jittered."""
        age = time.monotonic() - self.down_since if self.down_since is not None else 0.0
        return min(self.cap_s, max(self.base_s, age / 4)) * random.uniform(0.8, 1.0)

    def connected_for(self) -> float:
        """Seconds since Redis first answered, or answered again after the last outage (0 while it is down)."""
        if self.down_since is not None or self.connected_at is None:
            return 0.0
        return time.monotonic() - self.connected_at
