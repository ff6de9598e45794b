"""The auto-pipelined connection: ordered replies, errors, cancellation, connection loss, AUTH/SELECT."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, DataError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.devstack import RedisServer
from worker.runtime.pipe import Pipe, encode, sha1


@pytest.fixture
async def pipe(redis: Redis) -> AsyncIterator[Pipe]:
    """A pipe to the test Redis, closed after the test."""
    made = Pipe.for_client(redis)
    assert made is not None
    yield made
    await made.aclose()


async def test_concurrent_calls_share_one_connection_and_get_their_own_replies_in_order(
    redis: Redis, pipe: Pipe
) -> None:
    replies = await asyncio.gather(*(pipe.call("INCR", "n") for _ in range(500)))
    assert replies == list(range(1, 501))  # sent and answered in call order
    clients = [c for c in await redis.client_list() if c.get("cmd") == "incr"]
    assert len(clients) == 1  # one connection carried all 500
    assert await pipe.call("SET", "k", b"\x00\xffbin") == b"OK"
    assert await pipe.call("GET", "k") == b"\x00\xffbin"
    assert await pipe.call("HSET", "h", "f", 1.5, "g", 7) == 2
    assert await redis.hgetall("h") == {b"f": b"1.5", b"g": b"7"}


async def test_error_replies_raise_redis_py_exceptions_and_keep_the_order(redis: Redis, pipe: Pipe) -> None:
    await redis.set("str", "x")
    results = await asyncio.gather(
        pipe.call("INCR", "a"), pipe.call("LPUSH", "str", 1), pipe.call("INCR", "a"), return_exceptions=True
    )
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], ResponseError) and "WRONGTYPE" in str(results[1])
    with pytest.raises(NoScriptError):
        await pipe.call("EVALSHA", "0" * 40, 0)
    with pytest.raises(DataError):
        await pipe.call("SET", "k", None)
    script = "return ARGV[1] .. 'x'"
    assert await pipe.evalsha(sha1(script), script, [], ["a"]) == b"ax"  # unknown: EVAL loads it
    assert await redis.script_exists(sha1(script)) == [True]
    await redis.script_flush()
    assert await pipe.evalsha(sha1(script), script, [], ["b"]) == b"bx"  # flushed: loaded again


async def test_a_cancelled_caller_does_not_shift_the_replies_of_others(redis: Redis, pipe: Pipe) -> None:
    await redis.rpush("l", "v")
    slow = asyncio.create_task(pipe.call("BLPOP", "empty", 0.3))  # blocks the connection for 0.3 s
    after = asyncio.create_task(pipe.call("LPOP", "l"))
    await asyncio.sleep(0.05)
    slow.cancel()
    assert await after == b"v"  # the BLPOP's nil reply was dropped, not handed to LPOP
    assert await pipe.call("PING") == b"PONG"


async def test_connection_loss_fails_pending_calls_and_the_next_call_reconnects(redis: Redis) -> None:
    pipe = Pipe.for_client(redis)
    assert pipe is not None
    try:
        await pipe.call("CLIENT", "SETNAME", "victim")
        pending = asyncio.create_task(pipe.call("BLPOP", "empty", 5))
        await asyncio.sleep(0.05)
        victim = [c["id"] for c in await redis.client_list() if c.get("name") == "victim"]
        assert len(victim) == 1
        assert await redis.client_kill_filter(_id=victim[0]) == 1
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(pending, 5)
        assert await pipe.call("PING") == b"PONG"  # a fresh connection
    finally:
        await pipe.aclose()
    with pytest.raises(RedisConnectionError):
        await pipe.call("PING")  # closed for good


async def test_auth_and_database_from_the_url() -> None:
    server = RedisServer().start()
    try:
        admin = Redis.from_url(server.url)
        await admin.config_set("requirepass", "s3cret")
        await admin.aclose()
        client = Redis.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        pipe = Pipe.for_client(client)
        assert pipe is not None
        await pipe.call("SET", "where", "db3")
        assert await client.get("where") == b"db3"  # same database as the redis-py client
        assert await client.dbsize() == 1
        await pipe.aclose()
        wrong = Pipe.for_client(Redis.from_url(f"redis://:nope@127.0.0.1:{server.port}/0"))
        assert wrong is not None
        with pytest.raises(AuthenticationError):
            await wrong.call("PING")
        await wrong.aclose()
        await client.aclose()
    finally:
        server.stop()


def test_tls_clients_are_left_to_redis_py() -> None:
    assert Pipe.for_client(Redis.from_url("rediss://127.0.0.1:6390/0")) is None
    unix = Pipe.for_client(Redis.from_url("unix:///tmp/redis.sock?db=2"))
    assert unix is not None and unix._where[2] == "/tmp/redis.sock" and unix._db == 2


def test_encode_sends_every_supported_argument_type_as_a_bulk_string() -> None:
    class Name(enum.StrEnum):
        A = "a"

    class Level(enum.IntEnum):
        B = 3

    assert encode(["SET", Name.A, Level.B, 1.5, 7, b"\x00", bytearray(b"y")]) == (
        b"*7\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n3\r\n$3\r\n1.5\r\n$1\r\n7\r\n$1\r\n\x00\r\n$1\r\ny\r\n"
    )
    for bad in (True, None, [1]):
        with pytest.raises(DataError):
            encode([bad])
