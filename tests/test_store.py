"""RedisStore against a real redis-server: tenant isolation, encrypted secrets, CAS, idempotent inserts."""

from __future__ import annotations

import asyncio
import json

import pytest
from cryptography.exceptions import InvalidTag
from pydantic import SecretStr, ValidationError
from redis.asyncio import Redis

from tests.support.imap import make_mail
from worker.mail.message import parse_message
from worker.store import AccountIn, OutboxIn, OutboxStatus, RedisStore, SyncState

KEY = SecretStr("test-key")
SECRET = "hunter2-very-secret"


def account_in(**over: object) -> AccountIn:
    data: dict[str, object] = {
        "email": "alice@example.com",
        "username": "alice",
        "secret": SecretStr(SECRET),
        "imap_host": "imap.example.com",
        "smtp_host": "smtp.example.com",
    }
    return AccountIn.model_validate(data | over)


@pytest.fixture
def store(redis: Redis) -> RedisStore:
    return RedisStore(redis, KEY)


async def test_secret_encrypted_at_rest_and_never_dumped(store: RedisStore, redis: Redis) -> None:
    acc = await store.create_account("t1", account_in())
    for key in await redis.keys("*"):
        if await redis.type(key) == b"string":
            assert SECRET.encode() not in await redis.get(key)
    assert SECRET not in repr(acc) and SECRET not in str(acc.model_dump()) and SECRET not in acc.model_dump_json()
    loaded = await store.get_account("t1", acc.id)
    assert loaded is not None and loaded.secret.get_secret_value() == SECRET
    # another key cannot decrypt; a ciphertext moved to another account does not decrypt either
    with pytest.raises(InvalidTag):
        await RedisStore(redis, SecretStr("other-key")).get_account("t1", acc.id)
    other = await store.create_account("t1", account_in(secret=SecretStr("x")))
    doc = json.loads(await redis.get(f"store:t1:account:{acc.id}"))
    other_doc = json.loads(await redis.get(f"store:t1:account:{other.id}"))
    other_doc["secret_enc"] = doc["secret_enc"]
    await redis.set(f"store:t1:account:{other.id}", json.dumps(other_doc))
    with pytest.raises(InvalidTag):
        await store.get_account("t1", other.id)


async def test_tenants_cannot_reach_each_other(store: RedisStore) -> None:
    acc = await store.create_account("t1", account_in())
    out = await store.create_outbox("t1", OutboxIn(account_id=acc.id, sender="a@example.com", to=["b@example.com"]))
    parsed = parse_message(make_mail(1))
    [res] = await store.insert_messages("t1", acc.id, "INBOX", 7, [(1, (), parsed)])
    await store.put_analysis("t1", parsed.content_id, {"label": "x"})

    assert await store.get_account("t2", acc.id) is None
    assert await store.get_outbox("t2", out.id) is None
    assert await store.get_message("t2", res.message_id) is None
    assert await store.get_analysis("t2", parsed.content_id) is None
    assert await store.transition_outbox("t2", out.id, [OutboxStatus.QUEUED], OutboxStatus.SENDING) is None
    assert await store.list_accounts("t2") == []
    still = await store.get_outbox("t1", out.id)
    assert still is not None and still.status == OutboxStatus.QUEUED
    for bad in ("t1:x", "*", "", "t1 ", "a" * 65, "../t1"):
        with pytest.raises(ValueError):
            await store.get_account(bad, acc.id)
    with pytest.raises(ValueError):
        await store.get_outbox("t1", "o:1")


async def test_active_accounts_listed_across_tenants(store: RedisStore) -> None:
    a1 = await store.create_account("t1", account_in())
    a2 = await store.create_account("t2", account_in())
    await store.create_account("t2", account_in(active=False))
    assert await store.list_active_accounts() == sorted([("t1", a1.id), ("t2", a2.id)])
    assert await store.set_account_active("t1", a1.id, False)
    assert await store.list_active_accounts() == [("t2", a2.id)]
    assert not await store.set_account_active("t1", "nope", True)
    assert await store.delete_account("t2", a2.id)
    assert await store.list_active_accounts() == []


async def test_outbox_validation_message_id_and_cas(store: RedisStore) -> None:
    for bad in (["b@example.com, c@example.com"], ["Bob <b@example.com>"], ["b@exa mple.com"], ["x\r\nBcc: e@x.com"]):
        with pytest.raises(ValidationError):
            OutboxIn(account_id="a1", sender="a@example.com", to=bad)
    with pytest.raises(ValidationError, match="header injection"):
        OutboxIn(account_id="a1", sender="a@example.com", to=["b@example.com"], subject="x\r\nBcc: e@x.com")
    item = await store.create_outbox(
        "t1", OutboxIn(account_id="a1", sender="a@example.com", to=["B@Example.com", "b@example.com"])
    )
    assert item.to == ["B@example.com"] and item.message_id.startswith("<") and "example.com" in item.message_id
    # only one of many concurrent queued -> sending transitions wins
    results = await asyncio.gather(
        *[store.transition_outbox("t1", item.id, [OutboxStatus.QUEUED], OutboxStatus.SENDING) for _ in range(10)]
    )
    assert sum(r is not None for r in results) == 1
    sent = await store.transition_outbox("t1", item.id, [OutboxStatus.SENDING], OutboxStatus.SENT, attempts=1)
    assert sent is not None and sent.status == OutboxStatus.SENT and sent.message_id == item.message_id
    assert await store.transition_outbox("t1", item.id, [OutboxStatus.QUEUED], OutboxStatus.SENDING) is None
    with pytest.raises(ValueError):
        await store.update_outbox("t1", item.id, status=OutboxStatus.QUEUED)
    with pytest.raises(KeyError):
        await store.update_outbox("t1", "missing", attempts=2)


async def test_insert_is_idempotent_by_uid_and_by_content(store: RedisStore) -> None:
    msgs = [(uid, ("\\Seen",), parse_message(make_mail(uid))) for uid in (1, 2, 3)]
    first = await store.insert_messages("t1", "a1", "INBOX", 100, msgs)
    assert [r.new for r in first] == [True, True, True]
    again = await store.insert_messages("t1", "a1", "INBOX", 100, msgs)
    assert [r.new for r in again] == [False] * 3 and [r.message_id for r in again] == [r.message_id for r in first]
    # same content under a new UIDVALIDITY and new UIDs: known, not new
    moved = await store.insert_messages("t1", "a1", "INBOX", 200, [(u + 10, f, p) for u, f, p in msgs])
    assert [r.new for r in moved] == [False] * 3
    assert await store.count_messages("t1", "a1") == 3
    assert await store.known_uids("t1", "a1", "INBOX", 200) == [11, 12, 13]
    stored = await store.get_message("t1", first[0].message_id)
    assert stored is not None and stored.parsed.subject == "message 1" and stored.uid == 1

    await store.set_flags("t1", "a1", "INBOX", 200, {11: ("\\Flagged",), 99: ("\\Seen",)})
    assert await store.get_flags("t1", "a1", "INBOX", 200, [11, 12, 99]) == {11: ("\\Flagged",), 12: ("\\Seen",)}
    assert await store.expunge_uids("t1", "a1", "INBOX", 200, [12, 50]) == 1
    assert await store.known_uids("t1", "a1", "INBOX", 200) == [11, 13]
    await store.reset_mailbox("t1", "a1", "INBOX", 100)
    assert await store.known_uids("t1", "a1", "INBOX", 100) == []
    assert await store.get_message("t1", first[0].message_id) is not None


async def test_sync_state_analysis_and_locks(store: RedisStore) -> None:
    assert await store.get_sync_state("t1", "a1", "Entwürfe") == SyncState()
    await store.put_sync_state("t1", "a1", "Entwürfe", SyncState(uidvalidity=5, highest_uid=9))
    assert (await store.get_sync_state("t1", "a1", "Entwürfe")).highest_uid == 9
    assert (await store.get_sync_state("t1", "a1", "INBOX")).highest_uid == 0

    assert await store.mark_analysis_requested("t1", ["c1", "c2"]) == [True, True]
    assert await store.mark_analysis_requested("t1", ["c2", "c3"]) == [False, True]
    assert await store.analysis_requested("t1", ["c1", "c4"]) == [True, False]
    assert await store.analysis_requested("t2", ["c1"]) == [False]
    assert await store.put_analysis("t1", "c1", {"score": 1})
    assert not await store.put_analysis("t1", "c1", {"score": 2})
    assert await store.get_analysis("t1", "c1") == {"score": 1}

    assert await store.acquire_lock("t1", "sync:x", "job-1", 5)
    assert await store.acquire_lock("t1", "sync:x", "job-1", 5)  # same owner (a retry) re-enters
    assert not await store.acquire_lock("t1", "sync:x", "job-2", 5)
    assert await store.acquire_lock("t2", "sync:x", "job-2", 5)  # locks are per tenant
    await store.release_lock("t1", "sync:x", "job-2")  # not the owner: no effect
    assert not await store.acquire_lock("t1", "sync:x", "job-2", 5)
    await store.release_lock("t1", "sync:x", "job-1")
    assert await store.acquire_lock("t1", "sync:x", "job-2", 5)
