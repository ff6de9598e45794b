"""Small test helpers shared across test packages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(predicate: Callable[[], Awaitable[bool]], within: float = 10.0, every: float = 0.02) -> None:
    """Await ``predicate()`` until it is true; raise AssertionError after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(every)
