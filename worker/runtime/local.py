"""Embedded defaults: use REDIS_URL, else a Redis answering on localhost:6379, else start a private one."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from settings import Settings
from worker.devstack import RedisServer, port_open
from worker.runtime.connection import redis_address

log = logging.getLogger("worker")


@contextlib.asynccontextmanager
async def ensure_redis(settings: Settings) -> AsyncIterator[str]:
    """Yield a Redis URL; a redis-server started here is stopped on exit."""
    configured = redis_address(settings)
    if configured:
        yield configured
        return
    if port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    server = RedisServer().start()
    log.info("REDIS_URL unset and no local Redis: started redis-server on port %d", server.port)
    try:
        yield server.url
    finally:
        server.stop()
