"""sync_mailbox / sync_all_accounts against real Dovecot and pymap, run by real workers."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually
from tests.support import job_registry, job_settings, mail_account, spawn_worker
from tests.support.imap import PASSWORD, DovecotServer, ImapServer, PymapServer, make_mail
from tests.support.smtp import SmtpServer
from worker.jobs.email_sync import SyncReport
from worker.jobs.send_email import enqueue_send
from worker.mail.imap import ImapConfig, open_imap
from worker.mail.smtp import TlsMode
from worker.runtime import Client, Events, JobStatus, Worker
from worker.store import Account, Locks, OutboxIn, SqlStore, mailbox_key
from worker.store.sql.messages import location_id

ANALYSIS_QUEUE = "ai-analysis"

WORKER_QUEUES = ["email-sync"]


@pytest.fixture(params=["dovecot", "pymap"])
def imap(request: pytest.FixtureRequest) -> ImapServer:
    server: ImapServer = request.getfixturevalue(request.param)
    return server


async def sync(client: Client, account: Account, mailbox: str = "INBOX", timeout: float = 60) -> JobStatus:
    job = await client.enqueue(
        "sync_mailbox", {"tenant_id": account.tenant_id, "account_id": account.id, "mailbox": mailbox}
    )
    return await client.wait(job.job_id, timeout=timeout)


def report(status: JobStatus) -> SyncReport:
    assert status.state == "complete", status.error
    return SyncReport(**status.result)


async def analyses(redis: Redis) -> int:
    """Analysis jobs enqueued (ai-analysis is grouped by tenant: they wait in their tenant's group)."""
    page = await Client(redis).groups(ANALYSIS_QUEUE, limit=1000)
    return sum(g.waiting + g.delayed + g.active for g in page.items)


async def progress_events(redis: Redis, job_id: str) -> list[dict[str, object]]:
    events = await Events(redis).read(count=100_000)
    return [json.loads(e["progress"]) for _, e in events if e["type"] == "progress" and e["job_id"] == job_id]


async def test_initial_sync_of_1000_then_incremental(
    worker: Worker, client: Client, store: SqlStore, dovecot: DovecotServer, redis: Redis
) -> None:
    dovecot.append([make_mail(i) for i in range(1000)])
    account = await mail_account(store, imap_port=dovecot.port)
    status = await sync(client, account)
    first = report(status)
    assert (first.fetched, first.new, first.batches, first.analyses_requested) == (1000, 1000, 5, 1000)
    assert await store.count_messages("t1", account.id) == 1000 and await analyses(redis) == 1000
    assert [p["batch"] for p in await progress_events(redis, status.job_id)] == [1, 2, 3, 4, 5]
    state = await store.get_sync_state("t1", account.id, "INBOX")
    assert state.highest_uid == 1000 and state.uidvalidity == first.uidvalidity and state.highestmodseq
    async with open_imap(ImapConfig("127.0.0.1", dovecot.port, TlsMode.PLAIN, "alice", account.secret)) as s:
        await s.select("INBOX")
        flags = await s.fetch_flags(list(range(1, 1001)))
    assert not any("\\Seen" in f for f in flags.values())  # BODY.PEEK[]: nothing marked read

    dovecot.append([make_mail(i) for i in range(1000, 1005)])
    second = report(await sync(client, account))
    assert (second.fetched, second.new, second.known, second.batches) == (5, 5, 0, 1)
    assert await store.count_messages("t1", account.id) == 1005 and await analyses(redis) == 1005
    third = report(await sync(client, account))
    assert (third.fetched, third.flags_updated, third.expunged) == (0, 0, 0)


async def test_crash_mid_sync_resumes_without_duplicates(
    redis_url: str, client: Client, store: SqlStore, dovecot: DovecotServer, redis: Redis
) -> None:
    dovecot.append([make_mail(i, body=f"{i} " + "x" * 20_000) for i in range(600)])
    account = await mail_account(store, imap_port=dovecot.port)
    job = await client.enqueue("sync_mailbox", {"tenant_id": "t1", "account_id": account.id})
    proc = spawn_worker(redis_url, ["email-sync"])
    try:
        await eventually(lambda: _progressed(client, job.job_id), within=30)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    committed = (await store.get_sync_state("t1", account.id, "INBOX")).highest_uid
    assert 200 <= committed < 600  # killed part-way, after at least one committed batch
    async with Worker(redis_url, queues=["email-sync"], settings=job_settings(), registry=job_registry()):
        status = await client.wait(job.job_id, timeout=60)
    resumed = report(status)
    assert status.attempts == 2 and resumed.fetched == 600 - committed
    assert await store.count_messages("t1", account.id) == 600
    assert await store.known_uids("t1", account.id, "INBOX", resumed.uidvalidity) == list(range(1, 601))
    assert await analyses(redis) == 600  # each message analysed once, none lost


async def _progressed(client: Client, job_id: str) -> bool:
    return bool((await client.status(job_id)).progress)


async def test_uidvalidity_change_resyncs_without_duplicates_or_reanalysis(
    worker: Worker, client: Client, store: SqlStore, imap: ImapServer, redis: Redis
) -> None:
    mails = [make_mail(i) for i in range(30)]
    imap.append(mails)
    account = await mail_account(store, imap_port=imap.port)
    before = report(await sync(client, account))
    if isinstance(imap, DovecotServer):
        imap.set_uidvalidity(before.uidvalidity + 1000)
    else:  # pymap picks a new UIDVALIDITY per process: restart it with the same mail
        imap.kill()
        imap.start()
        imap.append(mails)
    after = report(await sync(client, account))
    assert after.uidvalidity_reset and after.uidvalidity != before.uidvalidity
    assert (after.fetched, after.new, after.known, after.analyses_requested) == (30, 0, 30, 0)
    assert await store.count_messages("t1", account.id) == 30 and await analyses(redis) == 30
    assert len(await store.known_uids("t1", account.id, "INBOX", after.uidvalidity)) == 30
    assert await store.known_uids("t1", account.id, "INBOX", before.uidvalidity) == []


async def test_server_killed_mid_fetch_fails_fast_and_retries(
    redis_url: str, client: Client, store: SqlStore, dovecot: DovecotServer, caplog: pytest.LogCaptureFixture
) -> None:
    dovecot.append([make_mail(i, body=f"{i} " + "y" * 100_000) for i in range(300)])
    account = await mail_account(store, imap_port=dovecot.port, timeout_s=120)  # only a lost link can fail fast
    settings = job_settings().model_copy(update={"sync_batch_bytes": 2_000_000})  # 15 batches: it is mid-fetch
    async with Worker(redis_url, queues=["email-sync"], settings=settings, registry=job_registry()):
        await _kill_mid_fetch(client, store, account, dovecot)
    failures = [r for r in caplog.records if r.name == "worker.jobs.email_sync" and "failed (attempt 1)" in r.message]
    assert failures and failures[0].exc_info is not None  # the failed attempt's traceback is in the log
    assert "connection lost" in caplog.text and "Traceback" in caplog.text


async def _kill_mid_fetch(client: Client, store: SqlStore, account: Account, dovecot: DovecotServer) -> None:
    job = await client.enqueue("sync_mailbox", {"tenant_id": "t1", "account_id": account.id})
    await eventually(lambda: _progressed(client, job.job_id), within=30)
    assert dovecot.proc is not None
    os.killpg(dovecot.proc.pid, signal.SIGSTOP)
    dovecot.kill()

    async def failed_once() -> bool:
        st = await client.status(job.job_id)
        return st.attempts >= 1 and "connection lost" in (st.error or "")

    await eventually(failed_once, within=10)
    dovecot.start()
    status = await client.wait(job.job_id, timeout=60)
    assert status.state == "complete" and status.attempts >= 2
    assert await store.count_messages("t1", account.id) == 300


BROKEN = [
    b"\x00\xff\xfe garbage without headers\r\n",
    b"Content-Type: multipart/mixed; boundary=zzz\r\nSubject: cut\r\n\r\n--zzz\r\nContent-Type: text/plain\r\n\r\nhalf",
    b"Subject: =?x-unknown?q?abc?=\r\nContent-Type: text/plain; charset=x-unknown-8\r\n\r\n\xe9t\xe9\r\n",
    b"Subject: bad b64\r\nContent-Transfer-Encoding: base64\r\nContent-Type: text/plain\r\n\r\n!!!notb64\r\n",
    b"From: <<<@@>>>\r\nTo: ,,,;;;\r\nDate: not a date\r\nSubject: \xff\xfe raw\r\n\r\nbody\r\n",
    b"Subject: =?koi8-r?b?8NLJ18XU?=\r\nContent-Type: text/plain; charset=windows-1251\r\n\r\n"
    b"\xcf\xf0\xe8\xe2\xe5\xf2\r\n",
]


def huge_attachment() -> bytes:
    body = base64.encodebytes(os.urandom(3_800_000)).replace(b"\n", b"\r\n")  # ~5 MB of base64
    return (
        b"From: a@example.com\r\nSubject: big\r\nMessage-ID: <big@x>\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n'
        b'--b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="a.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"--b1--\r\n"
    )


async def test_broken_mime_odd_charsets_and_huge_attachments_do_not_stop_the_batch(
    worker: Worker, client: Client, store: SqlStore, pymap: PymapServer, redis: Redis
) -> None:
    mails = [make_mail(0), *BROKEN, huge_attachment(), make_mail(1)]
    pymap.append(mails)
    account = await mail_account(store, imap_port=pymap.port)
    result = report(await sync(client, account))
    assert result.new == len(mails) and await store.count_messages("t1", account.id) == len(mails)
    uids = await store.known_uids("t1", account.id, "INBOX", result.uidvalidity)
    ids = [location_id("t1", account.id, "INBOX", result.uidvalidity, uid) for uid in uids]
    stored = [await store.get_message("t1", i) for i in ids]
    by_subject = {m.parsed.subject: m for m in stored if m is not None}
    assert by_subject["Привет"].parsed.text.strip() == "Привет"
    assert by_subject["big"].parsed.attachments[0].size > 3_000_000
    assert sum(bool(m.parsed.defects) for m in stored if m is not None) >= 3


async def test_flag_changes_and_expunges(worker: Worker, client: Client, store: SqlStore, imap: ImapServer) -> None:
    imap.append([make_mail(i) for i in range(10)])
    account = await mail_account(store, imap_port=imap.port)
    first = report(await sync(client, account))
    uids = await store.known_uids("t1", account.id, "INBOX", first.uidvalidity)
    flagged, gone = uids[1], [uids[2], uids[4]]
    imap.command(
        "SELECT INBOX",
        f"UID STORE {flagged} +FLAGS (\\Flagged \\Seen)",
        f"UID STORE {gone[0]},{gone[1]} +FLAGS (\\Deleted)",
        "EXPUNGE",
    )
    imap.append([make_mail(99)])
    second = report(await sync(client, account))
    assert (second.new, second.expunged, second.flags_updated) == (1, 2, 1)
    flags = await store.get_flags("t1", account.id, "INBOX", first.uidvalidity, [flagged])
    assert {"\\Flagged", "\\Seen"} <= set(flags[flagged])
    known = await store.known_uids("t1", account.id, "INBOX", first.uidvalidity)
    assert not set(gone) & set(known) and len(known) == 9
    assert report(await sync(client, account)).flags_updated == 0


async def test_cron_fans_out_once_per_mailbox_per_period(
    worker: Worker, client: Client, store: SqlStore, dovecot: DovecotServer
) -> None:
    dovecot.command('CREATE "Archive"')
    t1 = await mail_account(store, "t1", imap_port=dovecot.port, mailboxes=["INBOX", "Archive"])
    await mail_account(store, "t2", imap_port=dovecot.port)
    off = await mail_account(store, "t2", imap_port=dovecot.port)
    await store.set_account_active("t2", off.id, False)
    first = await client.wait((await client.enqueue("sync_all_accounts", {"every_s": 3600})).job_id, timeout=30)
    assert first.result == {"enqueued": 2, "duplicates": 0}  # one discovery per active account
    second = await client.wait((await client.enqueue("sync_all_accounts", {"every_s": 3600})).job_id, timeout=30)
    assert second.result == {"enqueued": 0, "duplicates": 2}

    async def synced() -> bool:  # discovery enqueued INBOX and Archive of t1 (a sync may retry after a lost
        # connection: the retry counts too)
        states = [await store.get_sync_state("t1", t1.id, box) for box in ("INBOX", "Archive")]
        return all(state.last_sync_at is not None for state in states)

    await eventually(synced, within=30)


async def test_one_sync_per_mailbox_at_a_time(
    worker: Worker, client: Client, store: SqlStore, dovecot: DovecotServer, redis: Redis
) -> None:
    dovecot.append([make_mail(i) for i in range(3)])
    account = await mail_account(store, imap_port=dovecot.port)
    lock = f"sync:{account.id}:{mailbox_key('INBOX')}"
    locks = Locks(redis)
    assert await locks.acquire("t1", lock, "another-job", 60)
    job = await client.enqueue("sync_mailbox", {"tenant_id": "t1", "account_id": account.id})

    async def deferred() -> bool:
        return "being synced" in ((await client.status(job.job_id)).error or "")

    await eventually(deferred, within=10)
    assert await store.count_messages("t1", account.id) == 0
    await locks.release("t1", lock, "another-job")
    assert await client.reschedule(job.job_id, defer_by=0)
    status = await client.wait(job.job_id, timeout=30)
    assert report(status).new == 3 and status.attempts == 1


async def test_bad_credentials_and_foreign_accounts_fail_permanently(
    worker: Worker, client: Client, store: SqlStore, dovecot: DovecotServer
) -> None:
    wrong = await mail_account(store, imap_port=dovecot.port, password="wrong")
    status = await sync(client, wrong)
    assert status.state == "dead" and status.attempts == 1 and "LOGIN refused" in (status.error or "")
    assert "wrong" not in (status.error or "")
    good = await mail_account(store, imap_port=dovecot.port)
    other_tenant = await client.enqueue("sync_mailbox", {"tenant_id": "t2", "account_id": good.id})
    status = await client.wait(other_tenant.job_id, timeout=30)
    assert status.state == "dead" and "not found" in (status.error or "")


async def _everything(redis: Redis) -> bytes:
    """Every value stored in Redis, concatenated."""
    out = bytearray()
    async for key in redis.scan_iter():
        kind = (await redis.type(key)).decode()
        if kind == "string":
            out += await redis.get(key) or b""
        elif kind == "hash":
            for k, v in (await redis.hgetall(key)).items():
                out += k + v
        elif kind == "list":
            out += b"".join(await redis.lrange(key, 0, -1))
        elif kind == "set":
            out += b"".join(await redis.smembers(key))
        elif kind == "zset":
            out += b"".join(await redis.zrange(key, 0, -1))
        elif kind == "stream":
            for _, fields in await redis.xrange(key):
                out += b"".join(k + v for k, v in fields.items())
    return bytes(out)


async def test_the_account_secret_never_leaks_into_redis_results_or_logs(
    worker: Worker,
    client: Client,
    store: SqlStore,
    dovecot: DovecotServer,
    redis: Redis,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    smtp = SmtpServer().start()
    try:
        smtp.handler.rcpt_replies["bounce@example.com"] = "550 5.1.1 No such user"
        dovecot.append([make_mail(i) for i in range(5)])
        account = await mail_account(store, imap_port=dovecot.port, smtp_port=smtp.port)
        assert report(await sync(client, account)).new == 5
        async with Worker(redis_url, queues=["send-email"], settings=job_settings(), registry=job_registry()):
            for rcpt in ("bob@example.com", "bounce@example.com"):
                data = OutboxIn(account_id=account.id, sender="alice@example.com", to=[rcpt], subject="s", text="t")
                item = await store.create_outbox("t1", data)
                await client.wait((await enqueue_send(client, item)).job_id, timeout=20)
        assert len(smtp.messages) == 1 and smtp.handler.logins  # it did log in with the secret
    finally:
        smtp.stop()
    assert await redis.dbsize() > 20
    assert PASSWORD.encode() not in await _everything(redis)
    assert PASSWORD not in caplog.text
