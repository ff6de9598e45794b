"""send_email against a scriptable aiosmtpd, run by real workers (in-process and a SIGKILLed subprocess)."""

from __future__ import annotations

import asyncio
import contextlib
import email
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from email import policy

from redis.asyncio import Redis

from tests.helpers import eventually
from tests.support import job_registry, job_settings, mail_account, spawn_worker
from tests.support.smtp import Received, SmtpServer
from worker.jobs.send_email import SEND_RATE, enqueue_send
from worker.runtime import Client, DeadLetters, Events, Worker, registry
from worker.store import Account, DeliveryStep, OutboxIn, OutboxItem, OutboxStatus, SqlStore, open_store

RCPTS = ["bob@example.com", "carol@example.com"]

WORKER_QUEUES = ["send-email"]


async def outbox(store: SqlStore, account: Account, **over: object) -> OutboxItem:
    data = {"account_id": account.id, "sender": "alice@example.com", "to": RCPTS[:1], "cc": RCPTS[1:]}
    data |= {"bcc": ["dave@example.com"], "subject": "Hello", "text": "Hi there"}
    return await store.create_outbox(account.tenant_id, OutboxIn.model_validate(data | over))


def message_ids(messages: list[Received]) -> list[str]:
    return [str(email.message_from_bytes(m.content, policy=policy.default)["Message-ID"]) for m in messages]


async def test_sends_once_with_its_message_id(
    worker: Worker, client: Client, store: SqlStore, smtp: SmtpServer
) -> None:
    account = await mail_account(store, smtp_port=smtp.port)
    item = await outbox(store, account)
    first = await enqueue_send(client, item)
    status = await client.wait(first.job_id, timeout=20)
    assert status.state == "complete" and status.result["status"] == "sent"
    again = await enqueue_send(client, item)  # a second request for the same item is the same job
    assert again.duplicate and again.job_id == first.job_id
    [got] = smtp.messages
    assert message_ids(smtp.messages) == [item.message_id]
    assert sorted(got.rcpt_tos) == sorted([*RCPTS, "dave@example.com"]) and b"dave@" not in got.content
    done = await store.get_outbox("t1", item.id)
    assert done is not None and done.status is OutboxStatus.SENT and done.attempts == 1 and done.sent_at
    assert set(done.recipients) == {*RCPTS, "dave@example.com"}


async def test_4xx_retries_with_the_same_message_id(
    worker: Worker, client: Client, store: SqlStore, smtp: SmtpServer
) -> None:
    smtp.handler.mail_replies.extend(["421 4.7.0 Busy, try later", "451 4.3.0 Temporary failure"])
    account = await mail_account(store, smtp_port=smtp.port)
    item = await outbox(store, account)
    status = await client.wait((await enqueue_send(client, item)).job_id, timeout=30)
    assert status.state == "complete" and status.attempts == 3
    assert message_ids(smtp.messages) == [item.message_id]
    done = await store.get_outbox("t1", item.id)
    assert done is not None and done.status is OutboxStatus.SENT and done.attempts == 3


async def test_5xx_bounces_to_the_dead_letters_without_retry(
    worker: Worker, client: Client, store: SqlStore, smtp: SmtpServer, redis: Redis
) -> None:
    smtp.handler.rcpt_replies |= dict.fromkeys([*RCPTS, "dave@example.com"], "550 5.1.1 No such user")
    account = await mail_account(store, smtp_port=smtp.port)
    item = await outbox(store, account)
    job = await enqueue_send(client, item)
    status = await client.wait(job.job_id, timeout=20)
    assert status.state == "dead" and status.attempts == 1 and "550" in (status.error or "")
    dead = await DeadLetters(redis).get(job.job_id)
    assert dead is not None and "550" in dead.error
    done = await store.get_outbox("t1", item.id)
    assert done is not None and done.status is OutboxStatus.BOUNCED and smtp.messages == []
    assert {a: (r.state, r.code) for a, r in done.recipients.items()} == dict.fromkeys(
        [*RCPTS, "dave@example.com"], ("rejected", 550)
    )


async def test_partial_refusal_is_recorded_per_recipient(
    worker: Worker, client: Client, store: SqlStore, smtp: SmtpServer
) -> None:
    smtp.handler.rcpt_replies |= {"carol@example.com": "550 5.1.1 No such user"}
    account = await mail_account(store, smtp_port=smtp.port)
    item = await outbox(store, account)
    status = await client.wait((await enqueue_send(client, item)).job_id, timeout=20)
    assert status.state == "complete" and (status.result["accepted"], status.result["refused"]) == (2, 1)
    done = await store.get_outbox("t1", item.id)
    assert done is not None and done.status is OutboxStatus.SENT
    assert done.recipients["carol@example.com"].state == "rejected"
    assert done.recipients["bob@example.com"].state == "accepted"
    assert [m.rcpt_tos for m in smtp.messages] == [["bob@example.com", "dave@example.com"]]


async def test_timeout_after_data_is_ambiguous_and_not_resent(
    worker: Worker, client: Client, store: SqlStore, smtp: SmtpServer
) -> None:
    smtp.handler.data_delay = 3.0
    account = await mail_account(store, smtp_port=smtp.port, timeout_s=0.5)
    item = await outbox(store, account)
    status = await client.wait((await enqueue_send(client, item)).job_id, timeout=20)
    assert status.state == "complete" and status.attempts == 1 and status.result["status"] == "ambiguous"
    done = await store.get_outbox("t1", item.id)
    assert done is not None and done.status is OutboxStatus.AMBIGUOUS and done.needs_decision
    assert done.delivery_step is DeliveryStep.DATA_END and "after the end of the message" in (done.last_error or "")
    assert len(smtp.messages) == 1
    again = await client.wait((await enqueue_send(client, item)).job_id, timeout=20)  # the same job: not resent
    assert again.result["status"] == "ambiguous" and len(smtp.messages) == 1


async def test_every_step_is_recorded_before_it_is_taken(
    worker: Worker, client: Client, store: SqlStore, smtp: SmtpServer, redis: Redis
) -> None:
    steps: list[str | None] = []

    def record(_: Received) -> None:  # the server got the end of DATA: the item already says so
        async def read() -> str | None:
            reader = open_store(job_settings())  # its own pool, on a loop of its own
            try:
                got = await reader.get_outbox("t1", item.id)
            finally:
                await reader.aclose()
            return got.delivery_step.value if got is not None and got.delivery_step else None

        with ThreadPoolExecutor(1) as pool:  # this runs on the SMTP server's own (running) loop
            steps.append(pool.submit(asyncio.run, read()).result(timeout=10))

    smtp.handler.on_data = record
    account = await mail_account(store, smtp_port=smtp.port)
    item = await outbox(store, account)
    await client.wait((await enqueue_send(client, item)).job_id, timeout=20)
    done = await store.get_outbox("t1", item.id)
    assert steps == ["data_end"]
    assert done is not None and done.delivery_step is DeliveryStep.REPLIED and done.resolution == "smtp"
    assert [e.status for e in done.history] == [OutboxStatus.SENDING, OutboxStatus.SENT]
    events = [f for _, f in await Events(redis).read(count=1000) if f.get("type") == "outbox"]
    assert [(e["outbox_id"], e["status"]) for e in events] == [(item.id, "sent")]


async def test_cancelled_or_missing_account_is_never_sent(
    worker: Worker, client: Client, store: SqlStore, smtp: SmtpServer
) -> None:
    account = await mail_account(store, smtp_port=smtp.port)
    cancelled = await outbox(store, account)
    await store.transition_outbox("t1", cancelled.id, [OutboxStatus.QUEUED], OutboxStatus.CANCELLED)
    status = await client.wait((await enqueue_send(client, cancelled)).job_id, timeout=20)
    assert status.state == "complete" and status.result["status"] == "cancelled"

    orphan = await outbox(store, account)
    await store.delete_account("t1", account.id)
    status = await client.wait((await enqueue_send(client, orphan)).job_id, timeout=20)
    assert status.state == "dead" and status.attempts == 1
    done = await store.get_outbox("t1", orphan.id)
    assert done is not None and done.status is OutboxStatus.FAILED
    # another tenant cannot send this tenant's item
    other = await client.enqueue("send_email", {"tenant_id": "t2", "account_id": account.id, "outbox_id": orphan.id})
    assert (await client.wait(other.job_id, timeout=20)).state == "dead"
    assert smtp.messages == []


def test_per_account_rate_limit_is_declared() -> None:
    spec = registry.get("send_email")
    assert spec is not None and spec.rate_limit == SEND_RATE and spec.rate_limit_key is not None
    payload = spec.payload.model_validate({"tenant_id": "t1", "account_id": "a1", "outbox_id": "o1"})  # type: ignore[union-attr]
    assert spec.rate_limit_key(payload) == "t1:a1"


async def test_worker_killed_after_the_server_accepted_sends_once(
    redis_url: str, client: Client, store: SqlStore, smtp: SmtpServer
) -> None:
    proc = spawn_worker(redis_url, ["send-email"])

    def kill_worker(_: Received) -> None:  # the message is queued; the worker dies before it hears "250"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    smtp.handler.on_data = kill_worker
    try:
        account = await mail_account(store, smtp_port=smtp.port)
        item = await outbox(store, account)
        job = await enqueue_send(client, item)
        await eventually(lambda: _exited(proc), within=30)
        assert len(smtp.messages) == 1
        async with Worker(redis_url, queues=["send-email"], settings=job_settings(), registry=job_registry()):
            status = await client.wait(job.job_id, timeout=30)
        assert status.state == "complete" and status.attempts == 2 and status.result["status"] == "ambiguous"
        done = await store.get_outbox("t1", item.id)
        assert done is not None and done.status is OutboxStatus.AMBIGUOUS
        assert message_ids(smtp.messages) == [item.message_id]  # delivered once, never resent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def _exited(proc: object) -> bool:
    return proc.poll() is not None  # type: ignore[attr-defined]
