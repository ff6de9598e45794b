"""One auto-pipelined Redis connection shared by many concurrent callers (the hot paths: claim, finish, enqueue).

redis-py gives each command a pooled connection of its own for a whole round trip, so N concurrent callers
cost N writes, N reads and N connections, and two commands sent on two connections may run in either order.
Here every command issued in the same event-loop iteration goes out in one write on one connection, and
replies are matched to callers in order: Redis answers a connection's commands in the order it received them.
That keeps many script calls in flight at once while their effects stay ordered, like ioredis' auto-pipelining
under BullMQ.

A caller cancelled while waiting loses nothing: its reply is still read (and dropped) in order. If the
connection drops, every pending call fails with ``redis.exceptions.ConnectionError`` and the next call
reconnects. TCP, Unix-socket and Sentinel-managed clients are supported (with Sentinel every connect asks the
sentinels for the current primary, and a ``READONLY`` reply, from a primary demoted by a failover, drops the
connection); ``Pipe.for_client`` returns None for other connection classes (TLS), and callers then use redis-py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser  # redis-py's mapping of error replies to exceptions
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError

FLUSH_NOW_BYTES = 8192  # commands at least this big are written at once instead of at the end of the loop turn
CONNECT_TIMEOUT_S = 5.0
Resolver = Callable[[], Awaitable[tuple[str, int]]]  # where the primary is now (Sentinel)


def encode(args: Sequence[Any]) -> bytes:
    """One command in RESP: an array of bulk strings (bytes, str, int or float arguments)."""
    out = [b"*%d\r\n" % len(args)]
    add = out.append
    for a in args:
        kind = type(a)  # exact type checks first: this runs for every argument of every hot-path call
        if kind is bytes:
            b = a
        elif kind is str:
            b = a.encode()
        elif kind is int:
            b = b"%d" % a
        elif kind is float:
            b = repr(a).encode()
        elif isinstance(a, bytes | bytearray | memoryview):
            b = bytes(a)
        elif isinstance(a, str):
            b = str.encode(a)
        elif isinstance(a, int) and not isinstance(a, bool):
            b = b"%d" % a
        elif isinstance(a, float):
            b = repr(float(a)).encode()
        else:
            raise DataError(f"invalid argument type {type(a).__name__}: pass bytes, str, int or float")
        add(b"$%d\r\n" % len(b))
        add(b)
        add(b"\r\n")
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.reader = hiredis.Reader()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.pipe._waiters
        while (reply := self.reader.gets()) is not False:
            fut = waiters.popleft()
            if fut.done():  # the caller was cancelled: the reply is dropped, the order kept
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(BaseParser.parse_error(str(reply)))  # type: ignore[no-untyped-call]
                if str(reply).startswith("READONLY") and self.pipe._transport is not None:
                    self.pipe._transport.abort()  # a demoted primary: reconnect to the current one
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe._lost(exc)


class Pipe:
    """An auto-pipelined connection to one Redis server (see the module docstring)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 6379, path: str | None = None, db: int = 0,
                 username: str | None = None, password: str | None = None,
                 resolve: Resolver | None = None) -> None:  # fmt: skip
        self._where = (host, port, path)
        self._resolve = resolve
        self._auth = [a for a in (username, password) if a is not None]
        self._db = db
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._out: list[bytes] = []
        self._connecting: asyncio.Future[None] | None = None
        self._closed = False
        self.client_id: int | None = None  # CLIENT ID of the current connection (for CLIENT UNBLOCK)

    @classmethod
    def for_client(cls, redis: Redis) -> Pipe | None:
        """A pipe to the server a redis-py client talks to, or None if its connection class is not plain TCP,
        a Unix socket or Sentinel-managed."""
        pool = redis.connection_pool
        kw = pool.connection_kwargs
        db, user, password = int(kw.get("db") or 0), kw.get("username"), kw.get("password")
        if isinstance(pool, SentinelConnectionPool) and pool.connection_class is SentinelManagedConnection:
            return cls(db=db, username=user, password=password, resolve=pool.get_master_address)
        if pool.connection_class is UnixDomainSocketConnection:
            return cls(path=kw["path"], db=db, username=user, password=password)
        if pool.connection_class is Connection:
            host, port = kw.get("host", "localhost"), int(kw.get("port", 6379))
            return cls(host=host, port=port, db=db, username=user, password=password)
        return None

    async def call(self, *args: Any) -> Any:
        """Send one command (in the next write) and wait for its reply."""
        await self.connect()
        return await self._send(encode(args))

    async def connect(self) -> None:
        """Connect unless connected (``call`` does this by itself; ``send`` needs it done)."""
        if self._transport is None or self._loop is not asyncio.get_running_loop():
            await self._connect()

    def send(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command right now, without awaiting (so several go out back to back); the future gets the
        reply. Needs a connection: ``await connect()`` first."""
        return self._send(encode(args))

    async def evalsha(self, sha: str, script: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """EVALSHA, falling back to EVAL (which caches the script) when the server does not know it yet."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", script, len(keys), *keys, *args)

    def _send(self, command: bytes) -> asyncio.Future[Any]:
        if self._transport is None or self._loop is None:
            raise RedisConnectionError("not connected to Redis")
        fut = self._loop.create_future()
        idle = not self._waiters
        self._waiters.append(fut)
        if (idle and not self._out) or len(command) >= FLUSH_NOW_BYTES:
            # nothing in flight (a lone caller pays no extra loop turn), or big enough to gain nothing by waiting
            self._out.append(command)
            self._flush()
            return fut
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(command)
        return fut

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and out:
            self._transport.write(b"".join(out))

    async def _connect(self) -> None:
        if self._closed:
            raise RedisConnectionError("this pipe was closed")
        loop = asyncio.get_running_loop()
        if self._transport is not None and self._loop is not loop:  # used from another event loop (tests)
            self._transport.abort()
            self._lost(None)
        if self._connecting is not None and self._loop is loop:
            await asyncio.shield(self._connecting)
            return
        self._loop = loop
        self._connecting = loop.create_future()
        try:
            host, port, path = self._where
            if self._resolve is not None:
                host, port = await self._resolve()  # MasterNotFoundError (a ConnectionError) during a failover
            try:
                if path is not None:
                    opening = loop.create_unix_connection(lambda: _Protocol(self), path)
                else:
                    opening = loop.create_connection(lambda: _Protocol(self), host, port)
                transport, _ = await asyncio.wait_for(opening, CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"connecting to Redis failed: {exc or 'timed out'}") from exc
            self._transport = transport  # type: ignore[assignment]
            setup = []
            if self._auth:
                setup.append(self._send(encode(["AUTH", *self._auth])))
            if self._db:
                setup.append(self._send(encode(["SELECT", self._db])))
            setup.append(self._send(encode(["CLIENT", "ID"])))
            replies = await asyncio.gather(*setup, return_exceptions=True)
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
            self.client_id = int(cast(int, replies[-1]))
            self._connecting.set_result(None)
        except BaseException as exc:
            self._connecting.set_exception(exc)
            self._connecting.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            if self._transport is not None:
                self._transport.abort()
            raise
        finally:
            self._connecting = None

    def _lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._out = []
        waiters, self._waiters = self._waiters, deque()
        for fut in waiters:
            if not fut.done():
                fut.set_exception(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    async def aclose(self) -> None:
        """Close the connection; pending calls fail with ConnectionError."""
        self._closed = True
        if self._transport is not None:
            self._transport.close()
            self._lost(None)


def sha1(script: str) -> str:
    """The SHA1 Redis uses to name a script."""
    return hashlib.sha1(script.encode()).hexdigest()
