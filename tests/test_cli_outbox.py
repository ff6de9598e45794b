"""`worker outbox ...` against a real Redis-backed store: find the ambiguous sends and decide them."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis

from tests.support import job_settings
from tests.test_cli import run, url  # noqa: F401  (the url fixture)
from worker.store import OutboxIn, OutboxItem, OutboxStatus, RedisStore


async def _ambiguous(redis_url: str) -> OutboxItem:
    """An item as an attempt leaves it when the end of DATA was written and no reply came."""
    redis = Redis.from_url(redis_url)
    store = RedisStore(redis, job_settings().secret_key)
    data = OutboxIn(account_id="a1", sender="alice@example.com", to=["bob@example.com"], subject="hi", text="x")
    item = await store.create_outbox("t1", data)
    for expect, to in ((OutboxStatus.QUEUED, OutboxStatus.SENDING), (OutboxStatus.SENDING, OutboxStatus.AMBIGUOUS)):
        moved = await store.transition_outbox("t1", item.id, [expect], to, last_error="no reply after end of DATA")
        assert moved is not None
        item = moved
    await redis.aclose()
    return item


def test_outbox_pending_list_and_resolve(capsys: pytest.CaptureFixture[str], url: str) -> None:  # noqa: F811
    item = asyncio.run(_ambiguous(url))
    code, out, _ = run(capsys, "outbox", "pending", "--redis-url", url)
    assert code == 0 and item.id in out and "no reply after end of DATA" in out
    code, out, _ = run(capsys, "outbox", "list", "t1", "--status", "ambiguous", "--json", "--redis-url", url)
    assert code == 0 and [i["id"] for i in json.loads(out)] == [item.id]
    code, out, _ = run(capsys, "outbox", "resolve", "t1", item.id, "mark_sent", "--note", "seen", "--redis-url", url)
    assert code == 0 and json.loads(out) == {"outbox_id": item.id, "status": "sent", "resolution": "operator"}
    code, out, _ = run(capsys, "outbox", "show", "t1", item.id, "--redis-url", url)
    assert code == 0 and json.loads(out)["history"][-1]["note"] == "operator: mark_sent (seen)"
    code, _, err = run(capsys, "outbox", "resolve", "t1", item.id, "fail", "--redis-url", url)
    assert code == 1 and err.strip() == "error: cannot fail: the message is sent"
    code, _, err = run(capsys, "outbox", "show", "t1", "onope", "--redis-url", url)
    assert code == 1 and "no outbox item onope" in err and "Traceback" not in err
    code, out, _ = run(capsys, "outbox", "pending", "--redis-url", url)
    assert code == 0 and "none" in out
