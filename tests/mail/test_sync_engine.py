"""MailboxSync (the engine under sync_mailbox) driven directly: crash points, batching, bounded compare."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from settings import Settings
from tests.mail.conftest import imap_config
from tests.support.imap import DovecotServer, ImapServer, make_mail, spooled_files
from worker.jobs.email_sync import MailboxSync, SyncReport
from worker.mail.imap import open_imap
from worker.mail.message import content_id
from worker.mail.spool import BUFFERED
from worker.store import InsertResult, SqlStore
from worker.store.sql.messages import location_id


class Crash(Exception):
    """Stands in for the worker dying at a chosen point."""


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore.from_settings(Settings(database_url=database_url, secret_key=SecretStr("k")))
    yield s
    await s.aclose()


async def run(
    server: ImapServer, store: SqlStore, requested: list[str], crash_after: int | None = None, **kw: Any
) -> SyncReport:
    async def request(r: InsertResult) -> None:
        if crash_after is not None and len(requested) >= crash_after:
            raise Crash
        requested.append(r.content_id)

    async with open_imap(imap_config(server)) as s:
        return await MailboxSync(s, store, "t1", "a1", "INBOX", request_analysis=request, **kw).run()


async def ignore(r: InsertResult) -> None:
    pass


async def test_crash_between_store_and_commit_loses_and_duplicates_nothing(
    dovecot: DovecotServer, store: SqlStore
) -> None:
    dovecot.append([make_mail(i) for i in range(95)])
    requested: list[str] = []
    held = (BUFFERED.memory, BUFFERED.spooled)
    with pytest.raises(Crash):  # dies in batch 3: stored, analysis half requested, position not committed
        await run(dovecot, store, requested, crash_after=45, max_batch=20)
    assert (BUFFERED.memory, BUFFERED.spooled) == held  # the batch and the one fetched ahead were dropped
    assert (await store.get_sync_state("t1", "a1", "INBOX")).highest_uid == 40
    assert await store.count_messages("t1", "a1") == 60
    again = await run(dovecot, store, requested, max_batch=20)
    assert (again.fetched, again.new, again.known) == (55, 35, 20)
    assert await store.count_messages("t1", "a1") == 95
    # every message was requested; only the 5 requested just before the crash were asked again, which the
    # job's enqueue (idempotency key per content) turns into duplicates of the queued analysis
    assert len(set(requested)) == 95 and len(requested) == 100


async def test_byte_bound_splits_batches(dovecot: DovecotServer, store: SqlStore) -> None:
    dovecot.append([make_mail(i, body="z" * 50_000) for i in range(10)])
    report = await run(dovecot, store, [], max_batch_bytes=120_000)
    assert (report.batches, report.new) == (5, 10)


async def test_messages_larger_than_the_memory_budget_sync_with_bounded_buffers(
    dovecot: DovecotServer, store: SqlStore, tmp_path: Path
) -> None:
    budget = 64 * 1024  # per batch; the sync holds at most two batches in memory
    big = [make_mail(i, body=f"big {i} " + "b" * 300_000) for i in range(5)]  # each > both batches together
    small = [make_mail(100 + i, body="s" * 4000) for i in range(40)]
    dovecot.append(small[:10] + big[:2] + small[10:30] + big[2:] + small[30:])
    held = (BUFFERED.memory, BUFFERED.spooled)  # 0 unless an earlier test kept fetched bodies
    BUFFERED.reset_peaks()
    report = await run(dovecot, store, [], max_batch_bytes=budget, spool_over=16 * 1024, spool_dir=str(tmp_path))
    assert (report.new, report.quarantined) == (45, 0)
    uids = await store.known_uids("t1", "a1", "INBOX", report.uidvalidity)
    records = [await store.get_message("t1", location_id("t1", "a1", "INBOX", report.uidvalidity, u)) for u in uids]
    assert {r.content_id for r in records if r} == {content_id(m) for m in small + big}  # every byte, each one
    assert 0 < BUFFERED.memory_peak - held[0] <= 2 * budget
    assert BUFFERED.spooled_peak - held[1] >= 300_000  # the big ones went to disk...
    assert (BUFFERED.memory, BUFFERED.spooled) == held and not spooled_files(tmp_path)  # ...and are gone

    # the same mailbox without spooling holds a big message in memory: the counter sees it
    BUFFERED.reset_peaks()
    async with open_imap(imap_config(dovecot)) as s:
        again = MailboxSync(s, store, "t1", "a2", "INBOX", request_analysis=ignore, max_batch_bytes=10**9)
        assert (await again.run()).new == 45
    assert BUFFERED.memory_peak - held[0] > 2 * budget and BUFFERED.memory == held[0]


async def test_flag_window_rotates_without_condstore(pymap: ImapServer, store: SqlStore) -> None:
    pymap.command('CREATE "Rotate"')
    pymap.append([make_mail(i) for i in range(6)], mailbox="Rotate")
    requested: list[str] = []

    async def sync() -> SyncReport:
        async def request(r: InsertResult) -> None:
            requested.append(r.content_id)

        async with open_imap(imap_config(pymap)) as s:
            return await MailboxSync(s, store, "t1", "a1", "Rotate", request_analysis=request, flag_window=4).run()

    first = await sync()
    uids = await store.known_uids("t1", "a1", "Rotate", first.uidvalidity)
    pymap.command('SELECT "Rotate"', f"UID STORE {uids[0]},{uids[5]} +FLAGS (\\Flagged)")
    seen = (await sync()).flags_updated  # window: first 4 known UIDs
    seen += (await sync()).flags_updated  # window: the remaining 2
    assert seen == 2
    assert (await store.get_sync_state("t1", "a1", "Rotate")).flag_cursor == 0  # wrapped around


async def test_many_condstore_changes_use_bounded_fetches_not_qresync(dovecot: DovecotServer, store: SqlStore) -> None:
    dovecot.append([make_mail(i) for i in range(250)])
    await run(dovecot, store, [])
    # more changes than one bounded FETCH: QRESYNC's SELECT would send them all in one reply
    dovecot.command("SELECT INBOX", "UID STORE 1:210 +FLAGS (\\Flagged)", "UID STORE 240 +FLAGS (\\Deleted)", "EXPUNGE")
    report = await run(dovecot, store, [])
    assert (report.flags_updated, report.expunged, report.new) == (210, 1, 0)
    flags = await store.get_flags("t1", "a1", "INBOX", report.uidvalidity, [1, 210, 211])
    assert "\\Flagged" in flags[1] and "\\Flagged" in flags[210] and "\\Flagged" not in flags[211]
