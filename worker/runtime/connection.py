"""Redis clients from one address: a ``redis://`` / ``unix://`` URL, or Redis Sentinel.

Sentinel is written ``redis+sentinel://[user:password@]host1:26379,host2:26379/<service>[/<db>]`` (the password
is the data nodes'; sentinels are asked without one), or set in settings as ``REDIS_SENTINELS`` (``host:port`` list)
+ ``REDIS_SENTINEL_SERVICE``. Clients made here ask the sentinels for the current primary on every (re)connect, so
they follow a failover by themselves; a connection to a primary that was demoted meanwhile is dropped on its first
``READONLY`` reply. ``Pipe.for_client`` builds the matching auto-pipelined connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from arq.connections import RedisSettings
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from settings import Settings

SCHEME = "redis+sentinel"
SENTINEL_TIMEOUT_S = 0.5  # per question to one sentinel (a dead sentinel must not stall a reconnect)
CONNECT_TIMEOUT_S = 5.0  # connecting to a data node


@dataclass(frozen=True)
class SentinelAddress:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel(url: str) -> bool:
    return url.startswith(SCHEME + "://")


def parse_sentinel(url: str) -> SentinelAddress:
    """``redis+sentinel://[user:pass@]h1:p1,h2:p2/service[/db]`` -> its parts (ValueError when malformed)."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        raise ValueError(f"not a {SCHEME}:// URL")
    hosts = parts.netloc.rsplit("@", 1)[-1]
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"sentinel address {item!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{SCHEME}:// URL needs /<service>[/<db>] after the sentinels")
    return SentinelAddress(
        tuple(sentinels),
        unquote(path[0]),
        int(path[1]) if len(path) == 2 else 0,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def redis_address(settings: Settings, url: str | None = None) -> str | None:
    """The address to use: ``url`` if given, else sentinel settings, else ``REDIS_URL`` (None when nothing is set)."""
    if url:
        return url
    if settings.redis_sentinels:
        service = settings.redis_sentinel_service
        return f"{SCHEME}://{settings.redis_sentinels.replace(' ', '')}/{service}"
    return settings.redis_url


def connection_pool(url: str, **kwargs: Any) -> ConnectionPool:
    """A redis-py connection pool for ``url`` (a Sentinel-managed one for ``redis+sentinel://``)."""
    kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
    if not is_sentinel(url):
        return ConnectionPool.from_url(url, **kwargs)
    addr = parse_sentinel(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(addr.sentinels),
        sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S},
    )
    return SentinelConnectionPool(  # type: ignore[no-untyped-call]
        addr.service,
        sentinel,
        db=addr.db,
        username=addr.username,
        password=addr.password,
        check_connection=False,
        **kwargs,
    )


def connect(url: str, **kwargs: Any) -> Redis:
    """A ``redis.asyncio.Redis`` for ``url``; no I/O until first used (so it can be made while Redis is down)."""
    return Redis.from_pool(connection_pool(url, **kwargs))


def arq_settings(url: str) -> RedisSettings:
    """arq's ``RedisSettings`` for ``url`` (arq's own loop: ``arq worker.WorkerSettings``), Sentinel included."""
    if not is_sentinel(url):
        return RedisSettings.from_dsn(url)
    addr = parse_sentinel(url)
    return RedisSettings(
        host=list(addr.sentinels),  # type: ignore[arg-type]
        sentinel=True,
        sentinel_master=addr.service,
        database=addr.db,
        username=addr.username,
        password=addr.password,
    )
