"""Properties (hypothesis) of the producer and the decoders, against a real Redis:

- ``Client.enqueue`` with arbitrary arguments either enqueues a job that ``status()`` can describe and whose
  stored record decodes to the payload it was given, or raises ValueError (pydantic's ValidationError and
  UnknownFunction are ValueErrors) and writes nothing.
- Arbitrary bytes given to the payload decoder (``unpack``), the executor's record decoding and the dead-letter
  reader never raise anything but PayloadError, and whatever they decode can be shown as JSON.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import msgpack
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

import tests.runtime.test_input  # noqa: F401  (registers validates_inside and untyped)
from tests.runtime.conftest import test_settings as rt_settings
from worker.devstack import RedisServer
from worker.runtime import Client, Registry
from worker.runtime.bounded import displayable
from worker.runtime.deadletter import _entry
from worker.runtime.executor import Executor
from worker.runtime.serializer import PayloadError, unpack

SETTINGS = rt_settings()
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.binary(max_size=10),
)
keys = st.one_of(st.text(max_size=10), st.integers(), st.binary(max_size=4), st.none())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(keys, inner, max_size=4),
        st.frozensets(st.integers(), max_size=3),
    ),
    max_leaves=12,
)
item_like = st.fixed_dictionaries(
    {"key": st.one_of(st.text(max_size=20), values)},
    optional={"n": values, "ratio": values, "extra": values},
)
numbers = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=5),
)
times = st.one_of(
    st.none(),
    st.datetimes(timezones=st.just(dt.UTC)),
    st.datetimes(),
    st.integers(),
    st.datetimes(
        min_value=dt.datetime.now() - dt.timedelta(days=30),
        max_value=dt.datetime.now() + dt.timedelta(days=400),
        timezones=st.just(dt.UTC),
    ),
)
delays = st.one_of(
    numbers, st.timedeltas(min_value=dt.timedelta(days=-2), max_value=dt.timedelta(days=800)), st.integers(0, 10**6)
)
enqueue_args = st.fixed_dictionaries(
    {
        "function": st.one_of(st.sampled_from(["validates_inside", "untyped", "no_such_job"]), st.text(max_size=5)),
        "payload": st.one_of(item_like, st.dictionaries(keys, values, max_size=4), values),
        "priority": st.one_of(numbers, st.integers(0, 9)),
        "defer_by": delays,
        "defer_until": times,
        "idempotency_key": st.one_of(st.none(), st.text(max_size=12), st.integers(), st.just("")),
        "job_id": st.one_of(st.none(), st.text(max_size=12), st.integers()),
    }
)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON data (floats compared exactly, tuples as lists)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


async def _enqueue_once(redis_url: str, args: dict[str, Any]) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await redis.flushdb()
        client = Client(redis, SETTINGS)
        try:
            enq = await client.enqueue(args.pop("function"), args.pop("payload"), **args)
        except ValueError:  # ValidationError and UnknownFunction included
            assert await redis.dbsize() == 0, "a refused enqueue wrote something"
            return
        st_ = await client.status(enq.job_id)
        assert st_.state in ("queued", "deferred"), st_
        record = unpack(await redis.get(f"arq:job:{enq.job_id}"))
        json.dumps(record["k"], allow_nan=False)  # the stored payload is plain JSON data
        assert st_.run_at is None or st_.run_at.year < 2100
    finally:
        await redis.aclose()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=enqueue_args)
def test_enqueue_enqueues_or_raises_value_error_and_writes_nothing(
    redis_server: RedisServer, args: dict[str, Any]
) -> None:
    asyncio.run(_enqueue_once(redis_server.url, args))


@settings(max_examples=100, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=8), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
), max_size=5))  # fmt: skip
def test_plain_json_payloads_round_trip(redis_server: RedisServer, payload: dict[str, Any]) -> None:
    async def run() -> None:
        redis = Redis.from_url(redis_server.url)
        try:
            enq = await Client(redis, SETTINGS).enqueue("untyped", payload)
            stored = unpack(await redis.get(f"arq:job:{enq.job_id}"))["k"]
            assert _same(stored, payload)
        finally:
            await redis.aclose()

    asyncio.run(run())


msgpack_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.binary(max_size=10),
)
msgpack_keys = st.one_of(st.text(max_size=10), st.integers(-5, 5), st.binary(max_size=4), st.none())
mapped = st.recursive(
    msgpack_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(msgpack_keys, inner, max_size=4)),
    max_leaves=10,
)
packed = st.one_of(
    st.binary(max_size=64),
    mapped.map(lambda v: msgpack.packb(v, use_bin_type=True, strict_types=False)),
    st.dictionaries(st.sampled_from(["f", "a", "k", "et", "p", "ik", "g"]), mapped, max_size=6).map(
        lambda d: msgpack.packb(d, use_bin_type=True)
    ),
)


@settings(max_examples=400, deadline=None)
@given(raw=packed)
@example(raw=msgpack.packb({"f": "x", "k": {b"\x80": 1}}, use_bin_type=True))  # a non-text payload key
def test_decoders_take_any_bytes(raw: bytes) -> None:
    try:
        value = unpack(raw)
    except PayloadError:
        value = None
    json.dumps(displayable(value), allow_nan=False)
    entry = _entry("id", raw)  # a dead-letter entry of any bytes is shown, never raises
    json.dumps(displayable(entry.model_dump(mode="python")), default=str, allow_nan=False)

    async def run() -> None:
        executor = Executor(Redis(), SETTINGS, Registry(), "w")  # no job registered: never reaches Redis
        out = await executor.run_raw("id", raw, 1, "q")
        assert out.kind == "dead" and out.error and len(out.error) < 5000
        entry = _entry("id", executor.dead_letter_entry("id", out, 1))
        assert not entry.error.startswith("unreadable"), entry.error  # every field it wrote reads back

    asyncio.run(run())
