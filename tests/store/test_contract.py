"""Every Store method on both backends: tenant isolation, encrypted secrets, compare-and-set, idempotent inserts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from cryptography.exceptions import InvalidTag
from pydantic import SecretStr, ValidationError
from sqlalchemy import select, update

from tests.store.conftest import store_settings
from tests.support.imap import make_mail
from worker.mail.message import parse_message
from worker.store import AccountIn, OutboxIn, OutboxStatus, SqlStore, SyncState, utcnow
from worker.store.sql.tables import accounts

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


async def test_secret_encrypted_at_rest_and_never_dumped(store: SqlStore, backend_url: str) -> None:
    acc = await store.create_account("t1", account_in())
    async with store.tx("t1", write=False) as conn:
        row = (await conn.execute(select(accounts).where(accounts.c.id == acc.id))).one()
    assert SECRET not in str(tuple(row)) and row.secret_enc.startswith(store.box.primary + ":")
    assert SECRET not in repr(acc) and SECRET not in str(acc.model_dump()) and SECRET not in acc.model_dump_json()
    loaded = await store.get_account("t1", acc.id)
    assert loaded is not None and loaded.secret.get_secret_value() == SECRET
    # another key cannot decrypt; a ciphertext moved to another account does not decrypt either
    other_key = SqlStore.from_settings(store_settings(backend_url, SecretStr("other-key")))
    try:
        with pytest.raises(InvalidTag):
            await other_key.get_account("t1", acc.id)
    finally:
        await other_key.aclose()
    other = await store.create_account("t1", account_in(secret=SecretStr("x")))
    async with store.tx("t1") as conn:
        await conn.execute(update(accounts).where(accounts.c.id == other.id).values(secret_enc=row.secret_enc))
    with pytest.raises(InvalidTag):
        await store.get_account("t1", other.id)


async def test_tenants_cannot_reach_each_other(store: SqlStore) -> None:
    acc = await store.create_account("t1", account_in())
    out = await store.create_outbox("t1", OutboxIn(account_id=acc.id, sender="a@example.com", to=["b@example.com"]))
    parsed = parse_message(make_mail(1))
    [res] = await store.insert_messages("t1", acc.id, "INBOX", 7, [(1, (), parsed)])
    await store.put_analysis("t1", parsed.content_id, {"label": "x"})
    await store.quarantine_message("t1", acc.id, "INBOX", 7, 2, error="boom")
    await store.put_sync_state("t1", acc.id, "INBOX", SyncState(uidvalidity=7, highest_uid=1))

    assert await store.get_account("t2", acc.id) is None
    assert await store.get_outbox("t2", out.id) is None
    assert await store.get_message("t2", res.message_id) is None
    assert await store.get_analysis("t2", parsed.content_id) is None
    assert await store.transition_outbox("t2", out.id, [OutboxStatus.QUEUED], OutboxStatus.SENDING) is None
    with pytest.raises(KeyError):
        await store.update_outbox("t2", out.id, attempts=5)
    assert await store.list_accounts("t2") == []
    assert await store.list_quarantined("t2") == []
    assert await store.known_uids("t2", acc.id, "INBOX", 7) == []
    assert await store.count_messages("t2", acc.id) == 0
    assert await store.get_sync_state("t2", acc.id, "INBOX") == SyncState()
    assert await store.analysis_requested("t2", [parsed.content_id]) == [False]
    assert not await store.set_account_active("t2", acc.id, False)
    assert not await store.delete_account("t2", acc.id)
    assert not await store.set_auth_error("t2", acc.id, "x")
    assert not await store.update_account_secret("t2", acc.id, SecretStr("stolen"))
    assert await store.expunge_uids("t2", acc.id, "INBOX", 7, [1]) == 0
    still = await store.get_outbox("t1", out.id)
    assert still is not None and still.status == OutboxStatus.QUEUED
    again = await store.get_account("t1", acc.id)
    assert again is not None and again.active and again.secret.get_secret_value() == SECRET
    assert await store.known_uids("t1", acc.id, "INBOX", 7) == [1]
    for bad in ("t1:x", "*", "", "t1 ", "a" * 65, "../t1", "t1' OR '1'='1"):
        with pytest.raises(ValueError):
            await store.get_account(bad, acc.id)
    with pytest.raises(ValueError):
        await store.get_outbox("t1", "o:1")


async def test_active_accounts_listed_across_tenants(store: SqlStore) -> None:
    a1 = await store.create_account("t1", account_in())
    a2 = await store.create_account("t2", account_in())
    await store.create_account("t2", account_in(active=False))
    assert await store.list_active_accounts() == sorted([("t1", a1.id), ("t2", a2.id)])
    assert await store.set_account_active("t1", a1.id, False)
    assert await store.list_active_accounts() == [("t2", a2.id)]
    assert not await store.set_account_active("t1", "nope", True)
    assert await store.delete_account("t2", a2.id)
    assert await store.list_active_accounts() == []
    assert [a.id for a in await store.list_accounts("t1")] == [a1.id]


async def test_auth_error_transition_and_new_secret(store: SqlStore) -> None:
    acc = await store.create_account("t1", account_in(auth_type="oauth2"))
    assert acc.auth_type == "oauth2" and acc.auth_state == "ok" and acc.auth_error is None
    results = await asyncio.gather(*[store.set_auth_error("t1", acc.id, f"rejected {i}") for i in range(5)])
    assert sorted(results) == [False] * 4 + [True]  # exactly one caller sees the ok -> error transition
    failed = await store.get_account("t1", acc.id)
    assert failed is not None and failed.auth_state == "auth_error" and (failed.auth_error or "").startswith("rejected")
    assert await store.update_account_secret("t1", acc.id, SecretStr("new-secret"))
    fixed = await store.get_account("t1", acc.id)
    assert fixed is not None and fixed.auth_state == "ok" and fixed.auth_error is None
    assert fixed.secret.get_secret_value() == "new-secret"
    assert await store.set_auth_error("t1", acc.id, "again")
    assert not await store.update_account_secret("t1", "a-missing", SecretStr("x"))


async def test_outbox_validation_message_id_and_cas(store: SqlStore) -> None:
    for bad in (["b@example.com, c@example.com"], ["Bob <b@example.com>"], ["b@exa mple.com"], ["x\r\nBcc: e@x.com"]):
        with pytest.raises(ValidationError):
            OutboxIn(account_id="a1", sender="a@example.com", to=bad)
    with pytest.raises(ValidationError, match="header injection"):
        OutboxIn(account_id="a1", sender="a@example.com", to=["b@example.com"], subject="x\r\nBcc: e@x.com")
    item = await store.create_outbox(
        "t1", OutboxIn(account_id="a1", sender="a@example.com", to=["B@Example.com", "b@example.com"])
    )
    assert item.to == ["B@example.com"] and item.message_id.startswith("<") and "example.com" in item.message_id
    assert await store.get_outbox("t1", item.id) == item
    # only one of many concurrent queued -> sending transitions wins
    results = await asyncio.gather(
        *[store.transition_outbox("t1", item.id, [OutboxStatus.QUEUED], OutboxStatus.SENDING) for _ in range(10)]
    )
    assert sum(r is not None for r in results) == 1
    sent = await store.transition_outbox("t1", item.id, [OutboxStatus.SENDING], OutboxStatus.SENT, attempts=1)
    assert sent is not None and sent.status == OutboxStatus.SENT and sent.message_id == item.message_id
    assert await store.transition_outbox("t1", item.id, [OutboxStatus.QUEUED], OutboxStatus.SENDING) is None
    ambiguous = await store.transition_outbox("t1", item.id, [OutboxStatus.SENT], OutboxStatus.AMBIGUOUS)
    assert ambiguous is not None and ambiguous.status is OutboxStatus.AMBIGUOUS
    with pytest.raises(ValueError):
        await store.update_outbox("t1", item.id, status=OutboxStatus.QUEUED)
    with pytest.raises(ValueError):
        await store.update_outbox("t1", item.id, message_id="<other@example.com>")
    with pytest.raises(ValueError):
        await store.update_outbox("t1", item.id, to=["not an address"])
    with pytest.raises(KeyError):
        await store.update_outbox("t1", "missing", attempts=2)
    updated = await store.update_outbox("t1", item.id, attempts=3, last_error="x", recipients={})
    assert updated.attempts == 3 and updated.last_error == "x" and updated.updated_at >= item.updated_at


async def test_insert_is_idempotent_per_location(store: SqlStore) -> None:
    msgs = [(uid, ("\\Seen",), parse_message(make_mail(uid))) for uid in (1, 2, 3)]
    first = await store.insert_messages("t1", "a1", "INBOX", 100, msgs)
    assert [(r.new, r.stored) for r in first] == [(True, True)] * 3
    again = await store.insert_messages("t1", "a1", "INBOX", 100, msgs)
    assert [(r.new, r.stored) for r in again] == [(False, False)] * 3
    assert [r.message_id for r in again] == [r.message_id for r in first]
    # the same content under a new UIDVALIDITY: new locations (new rows), known content (not new)
    await store.reset_mailbox("t1", "a1", "INBOX", 100)
    moved = await store.insert_messages("t1", "a1", "INBOX", 200, [(u + 10, f, p) for u, f, p in msgs])
    assert [(r.new, r.stored) for r in moved] == [(False, True)] * 3
    assert {r.content_id for r in moved} == {r.content_id for r in first}
    assert {r.message_id for r in moved}.isdisjoint(r.message_id for r in first)
    assert await store.count_messages("t1", "a1") == 3
    assert await store.known_uids("t1", "a1", "INBOX", 200) == [11, 12, 13]
    assert await store.known_uids("t1", "a1", "INBOX", 100) == []
    stored = await store.get_message("t1", first[0].message_id)
    assert stored is not None and stored.parsed.subject == "message 1" and stored.uid == 1
    assert stored.removed_at is not None and stored.parsed == msgs[0][2] and stored.flags == ("\\Seen",)

    await store.set_flags("t1", "a1", "INBOX", 200, {11: ("\\Flagged",), 99: ("\\Seen",)})
    assert await store.get_flags("t1", "a1", "INBOX", 200, [11, 12, 99]) == {11: ("\\Flagged",), 12: ("\\Seen",)}
    assert await store.expunge_uids("t1", "a1", "INBOX", 200, [12, 50]) == 1
    assert await store.known_uids("t1", "a1", "INBOX", 200) == [11, 13]
    assert await store.count_messages("t1", "a1") == 2
    assert await store.get_message("t1", moved[1].message_id) is not None

    # a true copy in another mailbox: its own row, known content
    [copy] = await store.insert_messages("t1", "a1", "Archive", 5, [(1, (), msgs[0][2])])
    assert copy.stored and not copy.new and copy.content_id == first[0].content_id
    # duplicates inside one batch: one row per location, content new only once
    twins = await store.insert_messages("t1", "a2", "INBOX", 1, [(1, (), msgs[0][2]), (2, (), msgs[0][2])])
    assert [(r.new, r.stored) for r in twins] == [(True, True), (False, True)]


async def test_hostile_strings_are_stored_not_fatal(store: SqlStore) -> None:
    parsed = parse_message(make_mail(1)).model_copy(
        update={
            "subject": "nul\x00 and lone \udcff surrogate",
            "text": "body\x00",
            "headers": {"x-\x00": "v\ud800"},
            "to": ["a\x00@example.com"],
        }
    )
    [res] = await store.insert_messages("t1", "a1", "INBOX\x00", 1, [(1, ("\\Seen\x00",), parsed)])
    got = await store.get_message("t1", res.message_id)
    assert got is not None and got.parsed.subject == "nul\ufffd and lone \ufffd surrogate"
    assert got.parsed.text == "body\ufffd" and got.parsed.headers == {"x-\ufffd": "v\ufffd"}
    assert await store.known_uids("t1", "a1", "INBOX\x00", 1) == [1]


async def test_concurrent_inserts_of_the_same_messages(store: SqlStore, backend_url: str) -> None:
    """Syncs of the same mailbox store the same batches at once (separate pools): one row per location, each
    created by exactly one of them, and none fails (many rounds: the transactions collide on rows in every order)."""
    others = [SqlStore.from_settings(store_settings(backend_url)) for _ in range(3)]
    try:
        for start in range(1, 201, 5):
            msgs = [(uid, (), parse_message(make_mail(uid))) for uid in range(start, start + 5)]
            results = await asyncio.gather(*(s.insert_messages("t1", "a1", "INBOX", 9, msgs) for s in [store, *others]))
            assert len({tuple(x.message_id for x in r) for r in results}) == 1
            assert all(sum(x.stored for x in row) == 1 for row in zip(*results, strict=True))
    finally:
        for s in others:
            await s.aclose()
    assert await store.count_messages("t1", "a1") == 200


async def test_outbox_cas_race_across_connections(store: SqlStore, backend_url: str) -> None:
    """Workers with their own pools race to claim the same item: exactly one wins each step."""
    item = await store.create_outbox("t1", OutboxIn(account_id="a1", sender="a@example.com", to=["b@example.com"]))
    stores = [SqlStore.from_settings(store_settings(backend_url)) for _ in range(4)]
    try:
        claims = await asyncio.gather(
            *[
                s.transition_outbox("t1", item.id, [OutboxStatus.QUEUED], OutboxStatus.SENDING, attempts=i)
                for i, s in enumerate(stores * 3)
            ]
        )
        finals = await asyncio.gather(
            *[
                s.transition_outbox("t1", item.id, [OutboxStatus.SENDING], to)
                for s, to in zip(stores, [OutboxStatus.SENT, OutboxStatus.FAILED] * 2, strict=True)
            ]
        )
    finally:
        for s in stores:
            await s.aclose()
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1
    done = [f for f in finals if f is not None]
    assert len(done) == 1
    final = await store.get_outbox("t1", item.id)
    assert final is not None and final.status == done[0].status and final.attempts == winners[0].attempts


async def test_sync_state_and_analyses(store: SqlStore) -> None:
    assert await store.get_sync_state("t1", "a1", "Entwürfe") == SyncState()
    await store.put_sync_state("t1", "a1", "Entwürfe", SyncState(uidvalidity=5, highest_uid=9))
    big = SyncState(uidvalidity=2**32 - 1, uidnext=2**32 - 1, highest_uid=2**32 - 2, highestmodseq=2**63 - 1)
    await store.put_sync_state("t1", "a1", "INBOX", big)
    assert (await store.get_sync_state("t1", "a1", "Entwürfe")).highest_uid == 9
    assert await store.get_sync_state("t1", "a1", "INBOX") == big

    assert await store.mark_analysis_requested("t1", ["c1", "c2"]) == [True, True]
    assert await store.mark_analysis_requested("t1", ["c2", "c3", "c3"]) == [False, True, False]
    assert await store.analysis_requested("t1", ["c1", "c4"]) == [True, False]
    assert await store.analysis_requested("t2", ["c1"]) == [False]
    assert await store.put_analysis("t1", "c1", {"score": 1, "category": "billing", "needs_reply": True})
    assert not await store.put_analysis("t1", "c1", {"score": 2})
    assert await store.get_analysis("t1", "c1") == {"score": 1, "category": "billing", "needs_reply": True}


async def test_quarantine(store: SqlStore) -> None:
    first = await store.quarantine_message("t1", "a1", "INBOX", 7, 42, error="UnicodeEncodeError: x", size=1234)
    assert (first.attempts, first.resolved, first.size) == (1, False, 1234)
    again = await store.quarantine_message("t1", "a1", "INBOX", 7, 42, error="still broken", size=1234)
    assert again.id == first.id and again.attempts == 2 and again.error == "still broken"
    assert again.first_seen == first.first_seen and again.last_seen >= first.last_seen
    await store.quarantine_message("t1", "a2", "Sent", 3, 1, error="other")
    assert [q.uid for q in await store.list_quarantined("t1", "a1")] == [42]
    assert len(await store.list_quarantined("t1")) == 2
    assert await store.get_quarantined("t1", first.id) == again
    assert await store.get_quarantined("t2", first.id) is None
    assert await store.resolve_quarantined("t2", "a1", "INBOX", 7, [42]) == 0
    assert await store.resolve_quarantined("t1", "a1", "INBOX", 7, [42, 43]) == 1
    assert await store.list_quarantined("t1", "a1") == []
    resolved = await store.list_quarantined("t1", "a1", include_resolved=True)
    assert len(resolved) == 1 and resolved[0].resolved and resolved[0].resolved_at is not None
    reopened = await store.quarantine_message("t1", "a1", "INBOX", 7, 42, error="broke again")
    assert not reopened.resolved and reopened.attempts == 3


async def test_outbox_lists_lookup_match_and_the_reapers_scan(store: SqlStore) -> None:
    def data(account: str) -> OutboxIn:
        return OutboxIn(account_id=account, sender="a@example.com", to=["b@example.com"])

    first, second = await store.create_outbox("t1", data("a1")), await store.create_outbox("t1", data("a2"))
    other = await store.create_outbox("t2", data("a1"))
    assert [i.id for i in await store.list_outbox("t1")] == [second.id, first.id]
    assert [i.id for i in await store.list_outbox("t1", account_id="a1")] == [first.id]
    assert await store.list_outbox("t1", status=OutboxStatus.SENT) == []
    found = await store.find_outbox_by_message_id("t1", first.message_id)
    assert found is not None and found.id == first.id
    assert await store.find_outbox_by_message_id("t2", first.message_id) is None
    # match: only the attempt that owns the item may finish it
    owned = await store.transition_outbox(
        "t1", first.id, [OutboxStatus.QUEUED], OutboxStatus.SENDING, send_attempt="att-1", delivery_step="data"
    )
    assert owned is not None and owned.send_attempt == "att-1" and owned.delivery_step == "data"
    assert (
        await store.transition_outbox(
            "t1", first.id, [OutboxStatus.SENDING], OutboxStatus.SENT, match={"send_attempt": "att-2"}
        )
        is None
    )
    noted = owned.noted(OutboxStatus.SENT, "accepted")
    sent = await store.transition_outbox(
        "t1", first.id, [OutboxStatus.SENDING], OutboxStatus.SENT, match={"send_attempt": "att-1"}, history=noted
    )
    assert sent is not None and sent.history[-1].note == "accepted" and sent.history == noted
    later = utcnow() + timedelta(seconds=1)
    stale = await store.unfinished_outbox([OutboxStatus.QUEUED, OutboxStatus.SENDING], later)
    assert {(i.tenant_id, i.id) for i in stale} == {("t1", second.id), ("t2", other.id)}  # across tenants
    assert await store.unfinished_outbox([OutboxStatus.QUEUED], first.created_at) == []
