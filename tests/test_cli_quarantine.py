"""`worker quarantine list | retry` against a real Dovecot, the SQL store and a worker: see it, retry it."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis

from tests.mail.conftest import imap_config
from tests.support import job_registry, job_settings, mail_account
from tests.support.imap import DovecotServer, make_mail
from tests.test_cli import run, url  # noqa: F401  (the url fixture)
from worker.jobs.email_sync import MailboxSync
from worker.mail.imap import open_imap
from worker.runtime import Client, Worker
from worker.store import Account, InsertResult, Quarantined, open_store


async def _ignore(r: InsertResult) -> None:
    pass


async def quarantined_big(server: DovecotServer) -> tuple[Account, Quarantined]:
    """A mailbox whose second message is over a sync's size limit: synced past it, that message quarantined
    (in the test's DATABASE_URL)."""
    server.append([make_mail(1), make_mail(2, subject="the big one", body="y" * 300_000), make_mail(3)])
    store = open_store(job_settings())
    try:
        account = await mail_account(store, imap_port=server.port)
        async with open_imap(imap_config(server)) as s:
            sync = MailboxSync(s, store, "t1", account.id, "INBOX", request_analysis=_ignore, max_message_bytes=100_000)
            assert (await sync.run()).quarantined == 1
        [q] = await store.list_quarantined("t1", account.id)
    finally:
        await store.aclose()
    return account, q


def work(url: str, job_id: str) -> str:  # noqa: F811  (not test_cli.work: other queue)
    """Run an email-sync worker until the job is finished; its final state."""

    async def main() -> str:
        redis = Redis.from_url(url)
        try:
            async with Worker(url, queues=["email-sync"], settings=job_settings(), registry=job_registry()):
                return (await Client(redis, job_settings()).wait(job_id, timeout=60)).state
        finally:
            await redis.aclose()

    return asyncio.run(main())


def test_quarantine_list_and_retry(
    capsys: pytest.CaptureFixture[str],
    url: str,  # noqa: F811
    database_url: str,
    dovecot: DovecotServer,
) -> None:
    account, q = asyncio.run(quarantined_big(dovecot))
    code, out, _ = run(capsys, "quarantine", "list", "--tenant", "t1", "--redis-url", url)
    assert code == 0 and q.id in out and "too large" in out
    code, out, _ = run(capsys, "quarantine", "list", "--tenant", "t1", "--json", "--redis-url", url)
    [listed] = json.loads(out)
    assert code == 0 and (listed["id"], listed["uid"], listed["account_id"], listed["attempts"]) == (
        q.id,
        2,
        account.id,
        1,
    )
    code, out, _ = run(capsys, "quarantine", "list", "--tenant", "t2", "--redis-url", url)
    assert code == 0 and "none" in out and q.id not in out  # another tenant sees nothing

    code, out, _ = run(capsys, "quarantine", "retry", "--tenant", "t1", q.id, "--redis-url", url)
    assert code == 0 and "retry enqueued as job" in out
    assert work(url, out.split()[-1]) == "complete"  # the default limit (64 MB) lets it through
    code, out, _ = run(capsys, "quarantine", "list", "--tenant", "t1", "--redis-url", url)
    assert code == 0 and "none" in out
    code, out, _ = run(capsys, "quarantine", "list", "--tenant", "t1", "--all", "--json", "--redis-url", url)
    assert code == 0 and [(i["id"], i["resolved"]) for i in json.loads(out)] == [(q.id, True)]


def test_quarantine_retry_of_an_unknown_or_foreign_id_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str],
    url: str,  # noqa: F811
    database_url: str,
    dovecot: DovecotServer,
) -> None:
    _, q = asyncio.run(quarantined_big(dovecot))
    for tenant, qid in (("t1", "qnope"), ("t2", q.id)):  # t2 cannot retry t1's message
        code, _, err = run(capsys, "quarantine", "retry", "--tenant", tenant, qid, "--redis-url", url)
        assert code == 1 and f"no quarantined message {qid} in tenant {tenant}" in err and "Traceback" not in err
    code, _, err = run(capsys, "quarantine", "retry", "--tenant", "t1", "--redis-url", url)
    assert code == 2 and "QUARANTINE_ID" in err  # argparse: an id is required
