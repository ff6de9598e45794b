"""Bounded, typed input: every bad argument to Client.enqueue is a ValueError (or pydantic's ValidationError) and
writes nothing; texts in errors, logs and dead letters are cut to a few KB; validation errors inside job code
are permanent."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from tests.helpers import eventually
from tests.runtime.conftest import test_settings as rt_settings
from worker.runtime import Client, DeadLetters, JobContext, Worker, create_pool, job
from worker.runtime.bounded import MAX_TEXT, brief, check_json, clip, displayable
from worker.runtime.errors import InvalidData

Q = "rt-test"
BIG = "x" * 10_000_000  # the "10 MB id"


class Item(BaseModel):
    key: str
    n: int = 0
    ratio: float = 0.0


@job(queue=Q, payload=Item, max_attempts=3, backoff=0.05)
async def validates_inside(ctx: JobContext, p: Item) -> None:
    """Validates data it loads itself: a pydantic ValidationError raised by job code."""
    await ctx.redis.incr(f"t:{p.key}:runs")
    Item.model_validate({"key": p.key, "n": "not a number"})


@job(queue=Q, payload=Item, max_attempts=3, backoff=0.05)
async def invalid_data(ctx: JobContext, p: Item) -> None:
    await ctx.redis.incr(f"t:{p.key[:20]}:runs")
    raise InvalidData(f"invalid outbox id {brief(p.key)}")


@job(queue=Q, payload=Item, max_attempts=2, backoff=0.05)
async def loud_value_error(ctx: JobContext, p: Item) -> None:
    """A plain ValueError quoting its whole input (transient: retried), as careless code does."""
    await ctx.redis.incr(f"t:{p.key[:20]}:runs")
    raise ValueError(f"no such record {p.key!r}")


@job(queue=Q)
async def untyped(ctx: JobContext, payload: Any) -> None:
    """A job without a payload model: Client.enqueue must still only take plain JSON data."""


async def _keys(redis: Redis) -> set[bytes]:
    return set(await redis.keys("*"))


BAD_ENQUEUES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("priority bool", {"key": "a"}, {"priority": True}),
    ("priority 2**64", {"key": "a"}, {"priority": 2**64}),
    ("priority 10", {"key": "a"}, {"priority": 10}),
    ("priority str", {"key": "a"}, {"priority": "5"}),
    ("int 2**64 in payload", {"key": "a", "n": 2**64}, {}),
    ("float inf in payload", {"key": "a", "ratio": math.inf}, {}),
    ("float nan in payload", {"key": "a", "ratio": math.nan}, {}),
    ("defer_by inf", {"key": "a"}, {"defer_by": math.inf}),
    ("defer_by nan", {"key": "a"}, {"defer_by": math.nan}),
    ("defer_by 2**53", {"key": "a"}, {"defer_by": 2**53}),
    ("defer_by 10**12", {"key": "a"}, {"defer_by": 10**12}),
    ("defer_by 10**400", {"key": "a"}, {"defer_by": 10**400}),
    ("defer_by negative", {"key": "a"}, {"defer_by": -1}),
    ("defer_by str", {"key": "a"}, {"defer_by": "60"}),
    ("defer_by bool", {"key": "a"}, {"defer_by": True}),
    ("defer_by timedelta beyond horizon", {"key": "a"}, {"defer_by": dt.timedelta(days=4000)}),
    ("defer_until year 9999", {"key": "a"}, {"defer_until": dt.datetime(9999, 12, 31, tzinfo=dt.UTC)}),
    ("defer_until year 1", {"key": "a"}, {"defer_until": dt.datetime(1, 1, 1, tzinfo=dt.UTC)}),
    ("defer_until naive", {"key": "a"}, {"defer_until": dt.datetime(2030, 1, 1)}),
    ("defer_until a number", {"key": "a"}, {"defer_until": 1_700_000_000}),
    ("both defer_by and defer_until", {"key": "a"}, {"defer_by": 1, "defer_until": dt.datetime.now(dt.UTC)}),
    ("idempotency key int", {"key": "a"}, {"idempotency_key": 5}),
    ("idempotency key empty", {"key": "a"}, {"idempotency_key": ""}),
    ("idempotency key 10 MB", {"key": "a"}, {"idempotency_key": BIG}),
    ("job id 10 MB", {"key": "a"}, {"job_id": BIG}),
    ("job id with a newline", {"key": "a"}, {"job_id": "a\nb"}),
    ("payload of 10 MB", {"key": BIG}, {}),
]


@pytest.mark.parametrize(("case", "payload", "kwargs"), BAD_ENQUEUES, ids=[c[0] for c in BAD_ENQUEUES])
async def test_bad_enqueue_arguments_raise_value_error_and_write_nothing(
    redis: Redis, client: Client, case: str, payload: dict[str, Any], kwargs: dict[str, Any]
) -> None:
    before = await _keys(redis)
    with pytest.raises(ValueError) as info:  # pydantic's ValidationError is a ValueError too
        await client.enqueue("validates_inside", payload, **kwargs)
    assert len(str(info.value)) < 5 * MAX_TEXT, case  # the message never quotes a huge value whole
    assert await _keys(redis) == before, case


UNTYPED_BAD: list[tuple[str, Any]] = [
    ("non-string key", {1: "a"}),
    ("nested non-string key", {"a": {(1, 2): "b"}}),
    ("bytes value", {"a": b"\xff"}),
    ("set value", {"a": {1, 2}}),
    ("object value", {"a": object()}),
    ("int beyond 64 bits", {"a": [2**64]}),
    ("nan", {"a": math.nan}),
    ("not a dict", ["a", "b"]),
    ("too deep", {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}),
]


@pytest.mark.parametrize(("case", "payload"), UNTYPED_BAD, ids=[c[0] for c in UNTYPED_BAD])
async def test_untyped_payload_must_be_plain_json(redis: Redis, client: Client, case: str, payload: Any) -> None:
    before = await _keys(redis)
    with pytest.raises(ValueError):
        await client.enqueue("untyped", payload)
    with pytest.raises(ValueError):
        await client.enqueue_many("untyped", [{"ok": 1}, payload])
    assert await _keys(redis) == before, case


async def test_bad_function_names_raise_value_error(redis: Redis, client: Client) -> None:
    before = await _keys(redis)
    for name in (None, 5, "", BIG, ["validates_inside"]):
        with pytest.raises(ValueError):
            await client.enqueue(name, {"key": "a"})  # type: ignore[arg-type]
    assert await _keys(redis) == before


async def test_good_arguments_at_the_bounds_are_accepted(client: Client) -> None:
    horizon = client.settings.schedule_horizon_s
    r1 = await client.enqueue("validates_inside", {"key": "a", "n": 2**63 - 1, "ratio": 1e308}, priority=9)
    r2 = await client.enqueue("validates_inside", {"key": "b"}, defer_by=horizon - 60)
    r3 = await client.enqueue("validates_inside", {"key": "c"}, defer_until=dt.datetime(1971, 1, 1, tzinfo=dt.UTC))
    r4 = await client.enqueue("untyped", {"a": [1, 2.5, None, True, {"b": "c"}]}, idempotency_key="k" * 1000)
    st = await client.status(r2.job_id)
    assert st.state == "deferred" and st.run_at is not None
    assert st.run_at > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=horizon - 120)
    assert (await client.status(r3.job_id)).state == "queued"  # a past time runs now
    assert {(await client.status(r.job_id)).state for r in (r1, r4)} == {"queued"}
    with pytest.raises(ValueError):
        await client.reschedule(r2.job_id, defer_by=horizon + 60)


async def test_horizon_is_configurable(redis: Redis) -> None:
    client = Client(redis, rt_settings(schedule_horizon_s=3600))
    await client.enqueue("validates_inside", {"key": "a"}, defer_by=3000)
    with pytest.raises(ValueError, match="SCHEDULE_HORIZON_S"):
        await client.enqueue("validates_inside", {"key": "a"}, defer_by=4000)


async def test_validation_error_inside_job_code_is_permanent(redis: Redis, client: Client, worker: Worker) -> None:
    r = await client.enqueue("validates_inside", {"key": "v1"})
    st = await client.wait(r.job_id, timeout=10)
    assert st.state == "dead" and st.attempts == 1
    assert await redis.get("t:v1:runs") == b"1"
    entry = await DeadLetters(redis, client).get(r.job_id)
    assert entry is not None and entry.error.startswith("invalid data: n: Input should be a valid integer")


async def test_invalid_data_is_permanent_and_bounded(redis: Redis, client: Client, worker: Worker) -> None:
    """A 200 KB id (within the payload limit) in an InvalidData: one run, a short error everywhere."""
    key = "y" * 200_000
    r = await client.enqueue("invalid_data", {"key": key})
    st = await client.wait(r.job_id, timeout=10)
    assert st.state == "dead" and st.attempts == 1
    assert await redis.get(f"t:{key[:20]}:runs") == b"1"
    assert st.error is not None and len(st.error) < 1000
    entry = await DeadLetters(redis, client).get(r.job_id)
    assert entry is not None and entry.error.startswith("invalid data: InvalidData: invalid outbox id 'yyy")
    assert len(entry.error) < 1000 and len(entry.traceback) <= 8000


async def test_a_huge_value_is_never_copied_whole(
    redis_url: str, redis: Redis, client: Client, worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    """A 10 MB id from a plain arq producer (Client refuses it): retried as a plain ValueError, but every log
    line, event and the dead letter stay small, and the dead letter keeps only the payload's first bytes."""
    pool = await create_pool(redis_url)
    try:
        enq = await pool.enqueue_job("loud_value_error", key=BIG, _queue_name=Q)
    finally:
        await pool.aclose()
    assert enq is not None
    caplog.set_level(logging.INFO, logger="worker.runtime")
    dlq = DeadLetters(redis, client)

    async def dead() -> bool:
        return await dlq.get(enq.job_id) is not None

    await eventually(dead, within=15)
    entry = await dlq.get(enq.job_id)
    assert entry is not None and entry.attempts == 2
    assert entry.payload is None and entry.raw is not None and len(entry.raw) <= 2 * 4096
    assert "payload of" in entry.error and len(entry.error) < 3 * MAX_TEXT
    assert len(await redis.get(f"rt:dlq:{enq.job_id}") or b"") < 50_000
    assert caplog.records and max(len(r.getMessage()) for r in caplog.records) < 3 * MAX_TEXT
    for _, fields in await redis.xrange("rt:events"):
        assert sum(len(v) for v in fields.values()) < 5000


def test_clip_and_brief() -> None:
    assert clip("abc", 5) == "abc"
    assert clip("a" * 10, 4) == "aaaa... (6 more characters)"
    assert brief(BIG).startswith("'xxx") and brief(BIG).endswith("(10000000 characters)")
    assert len(brief(BIG)) < 300 and len(brief(list(range(100_000)))) < 260
    assert brief(b"\xff" * 1000).endswith("(1000 bytes)")


def test_displayable_makes_any_record_json_safe() -> None:
    record = {
        "a": b"\xff\xfe",
        b"\xff": 1,
        3: [math.nan, math.inf, 1.5],
        "deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
        "long": "z" * 100_000,
        "obj": object(),
    }
    shown = displayable(record)
    text = json.dumps(shown, allow_nan=False)
    assert len(text) < 20_000
    assert shown["a"] == "\\xff\\xfe" and shown["3"] == [None, None, 1.5]
    with pytest.raises(ValueError):
        check_json(record)
    check_json({"a": [1, 2.5, None, True, {"b": "c"}], "n": -(2**63)})


async def test_status_survives_records_written_by_any_producer(redis: Redis, client: Client) -> None:
    """Hand-written records (wrong types, non-UTF-8 bytes, absurd times) never make status() raise."""
    import msgpack

    now = int(time.time() * 1000)
    await redis.set("arq:job:odd", msgpack.packb({"f": 5, "a": [], "k": {}, "et": "yesterday"}))
    await redis.set("arq:result:odd2", msgpack.packb({"f": b"\xff", "q": 1, "t": "x", "s": True, "r": b"\xff"}))
    await redis.hset("rt:info:odd3", mapping={"a": "many", "e": b"\xff\xfe error"})
    await redis.zadd(Q, {"odd4": now + 10**15})
    await redis.set("arq:job:odd4", msgpack.packb({"f": "validates_inside", "a": [], "k": {}, "et": 2**63 - 1}))
    for jid in ("odd", "odd2", "odd3", "odd4"):
        st = await client.status(jid)
        json.dumps(displayable(st.model_dump(mode="python")), default=str)  # what the API shows of it
    assert (await client.status("odd2")).state == "complete"


async def test_payload_size_limit_is_configurable(redis: Redis) -> None:
    client = Client(redis, rt_settings(job_max_payload_bytes=2048))
    await client.enqueue("validates_inside", {"key": "k" * 1500})
    with pytest.raises(ValueError, match="JOB_MAX_PAYLOAD_BYTES"):
        await client.enqueue("validates_inside", {"key": "k" * 3000})
    with pytest.raises(ValidationError):
        await client.enqueue("validates_inside", {"key": 5})


async def test_enqueue_many_checks_every_payload_before_the_first_chunk(redis: Redis) -> None:
    client = Client(redis, rt_settings(job_max_payload_bytes=2048))
    before = await _keys(redis)
    payloads = [{"key": f"k{i}"} for i in range(30)] + [{"key": "k" * 3000}]
    with pytest.raises(ValueError, match="JOB_MAX_PAYLOAD_BYTES"):
        await client.enqueue_many("validates_inside", payloads, chunk=10)
    assert await _keys(redis) == before
    assert len(await client.enqueue_many("validates_inside", payloads[:30], chunk=10)) == 30


async def test_grouped_jobs_get_the_same_checks(redis: Redis, client: Client) -> None:
    before = await _keys(redis)
    for bad in ({"tenant": "t", "n": 2**64}, {"tenant": "t", "sleep": math.inf}):
        with pytest.raises(ValueError):
            await client.enqueue("tenant_work", bad)
        with pytest.raises(ValueError):
            await client.enqueue_many("tenant_work", [{"tenant": "t"}, bad])
    assert await _keys(redis) == before
