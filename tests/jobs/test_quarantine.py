"""Poison messages never block a mailbox: quarantined (too large, unparsable, unstorable), synced past, and
retried after a fix - against a real Dovecot, the real SQL store and real workers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from tests.jobs.test_email_sync import analyses
from tests.mail.conftest import imap_config
from tests.support import job_registry, job_settings, mail_account
from tests.support.imap import DovecotServer, make_mail
from worker.jobs.email_sync import MailboxSync, SyncReport
from worker.mail.imap import open_imap
from worker.mail.message import ParsedMessage
from worker.runtime import Client, Worker
from worker.store import InsertResult, Store

WORKER_QUEUES: list[str] = []  # each test runs the workers it needs


async def run_job(client: Client, function: str, payload: dict[str, Any]) -> dict[str, Any]:
    status = await client.wait((await client.enqueue(function, payload)).job_id, timeout=60)
    assert status.state == "complete", status.error
    return dict(status.result)


async def test_too_large_is_quarantined_synced_past_and_stored_by_a_retry_after_the_limit_is_raised(
    redis_url: str, client: Client, store: Store, dovecot: DovecotServer, redis: Redis
) -> None:
    big = make_mail(2, subject="the big one", body="y" * 300_000)
    dovecot.append([make_mail(1), big, make_mail(3)])
    account = await mail_account(store, imap_port=dovecot.port)  # type: ignore[arg-type]
    ids = {"tenant_id": "t1", "account_id": account.id, "mailbox": "INBOX"}
    strict = job_settings().model_copy(update={"sync_max_message_bytes": 100_000})
    async with Worker(redis_url, queues=["email-sync"], settings=strict, registry=job_registry()):
        first = SyncReport(**await run_job(client, "sync_mailbox", ids))
        assert (first.new, first.quarantined, first.highest_uid) == (2, 1, 3)  # moved past it
        again = SyncReport(**await run_job(client, "sync_mailbox", ids))
        assert (again.fetched, again.quarantined) == (0, 0)  # not fetched (or counted) again
        [q] = await store.list_quarantined("t1", account.id)
        assert (q.uid, q.uidvalidity, q.attempts) == (2, first.uidvalidity, 1)
        assert q.size == len(big) and "too large" in q.error
        still = await run_job(client, "retry_quarantined", {"tenant_id": "t1", "quarantine_id": q.id})
        assert still["resolved"] is False and "too large" in still["error"]  # not fixed yet: kept, counted
        assert (await store.list_quarantined("t1", account.id))[0].attempts == 2
    async with Worker(redis_url, queues=["email-sync"], settings=job_settings(), registry=job_registry()):
        fixed = await run_job(client, "retry_quarantined", {"tenant_id": "t1", "quarantine_id": q.id})
    assert fixed["resolved"] is True and fixed["outcome"] == "stored" and fixed["analyses_requested"] == 1
    assert await store.list_quarantined("t1", account.id) == []
    [resolved] = await store.list_quarantined("t1", account.id, include_resolved=True)
    assert resolved.resolved
    message = await store.get_message("t1", fixed["message_id"])
    assert message is not None and message.uid == 2 and message.parsed.subject == "the big one"
    assert await store.known_uids("t1", account.id, "INBOX", first.uidvalidity) == [1, 2, 3]
    assert await analyses(redis) == 3  # every message analysed once


class FailingStore:
    """The real store, except that storing a message with a chosen subject raises (a store bug or limit)."""

    def __init__(self, store: Store, poison: str) -> None:
        self._store = store
        self.poison = poison
        self.batch_calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def insert_messages(
        self,
        tenant_id: str,
        account_id: str,
        mailbox: str,
        uidvalidity: int,
        items: Sequence[tuple[int, tuple[str, ...], ParsedMessage]],
    ) -> list[InsertResult]:
        self.batch_calls.append(len(items))
        if any(p.subject == self.poison for _, _, p in items):
            raise ValueError("value too long for the column")
        return await self._store.insert_messages(tenant_id, account_id, mailbox, uidvalidity, items)


async def test_a_batch_that_fails_to_store_falls_back_to_one_by_one_and_quarantines_only_the_culprit(
    store: Store, dovecot: DovecotServer
) -> None:
    dovecot.append([make_mail(i, subject="poison" if i == 7 else None) for i in range(20)])
    account = await mail_account(store, imap_port=dovecot.port)  # type: ignore[arg-type]
    failing = FailingStore(store, "poison")
    requested: list[InsertResult] = []

    async def request_analysis(r: InsertResult) -> None:
        requested.append(r)

    async with open_imap(imap_config(dovecot)) as session:
        sync = MailboxSync(session, failing, "t1", account.id, "INBOX", request_analysis=request_analysis)  # type: ignore[arg-type]
        report = await sync.run()
    assert (report.new, report.quarantined, report.highest_uid) == (19, 1, 20)
    assert failing.batch_calls[0] == 20 and failing.batch_calls[1:] == [1] * 20  # the batch, then one by one
    [q] = await store.list_quarantined("t1", account.id)
    assert q.uid == 8 and "value too long" in q.error and q.size
    assert len(requested) == 19
    assert await store.known_uids("t1", account.id, "INBOX", report.uidvalidity) == [u for u in range(1, 21) if u != 8]
