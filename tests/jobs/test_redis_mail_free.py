"""Redis keeps no mail content: after a real sync (Dovecot) and the analysis of every new message, no Redis
key - of any type: strings, hashes, lists, sets, zsets, streams (the event stream included), job records
and results, dead letters - holds a subject, body, header value, address, display name or attachment name
of the mail, nor does any key name. The mail lives in the SQL store only."""

from __future__ import annotations

import base64
import json

from redis.asyncio import Redis

from tests.helpers import eventually
from tests.support import mail_account
from tests.support.imap import DovecotServer
from worker.runtime import Client, Worker
from worker.store import MessageQuery, SqlStore

WORKER_QUEUES = ["email-sync", "ai-analysis"]
# Distinctive tokens in every part of the mail; none may appear anywhere in Redis.
NEEDLES = {
    "subject": "Quarterly-Zebra-7431",
    "encoded subject (decoded)": "Grüße-Yak-6610",
    "text body": "Body-Narwhal-5521",
    "html body": "Html-Ibex-2277",
    "from address": "okapi.sender@zoo-mail.example",
    "display name": "Okapi Sendername",
    "to address": "quokka.rcpt@zoo-mail.example",
    "cc address": "axolotl.cc@zoo-mail.example",
    "message-id": "msgid-Pangolin-9912",
    "references": "ref-Marmot-1187",
    "list-id": "list-Tapir-3344",
    "attachment name": "Capybara-report",
    "attachment content": "Attachment-Wombat-8080",
}


def _mail(i: int) -> bytes:
    attachment = base64.b64encode(f"{NEEDLES['attachment content']} {i}\n".encode()).decode()
    subject = "=?utf-8?b?" + base64.b64encode(f"{NEEDLES['encoded subject (decoded)']} {i}".encode()).decode() + "?="
    return (
        f"From: {NEEDLES['display name']} <{NEEDLES['from address']}>\r\n"
        f"To: {NEEDLES['to address']}\r\n"
        f"Cc: {NEEDLES['cc address']}\r\n"
        f"Subject: {NEEDLES['subject']} {i} {subject}\r\n"
        f"Message-ID: <{NEEDLES['message-id']}.{i}@zoo-mail.example>\r\n"
        f"References: <{NEEDLES['references']}@zoo-mail.example>\r\n"
        f"List-Id: <{NEEDLES['list-id']}.zoo-mail.example>\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        'Content-Type: multipart/alternative; boundary="b2"\r\n'
        "\r\n"
        "--b2\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{NEEDLES['text body']} {i}: please reply to {NEEDLES['from address']} by Friday?\r\n"
        "--b2\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "\r\n"
        f"<p>{NEEDLES['html body']} {i}</p>\r\n"
        "--b2--\r\n"
        "--b1\r\n"
        f'Content-Type: application/pdf; name="{NEEDLES["attachment name"]}.pdf"\r\n'
        f'Content-Disposition: attachment; filename="{NEEDLES["attachment name"]}.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        f"{attachment}\r\n"
        "--b1--\r\n"
    ).encode()


async def redis_dump(redis: Redis) -> dict[bytes, bytes]:
    """Every key of every type with everything it holds (members, fields, scores' members, stream entries)."""
    out: dict[bytes, bytes] = {}
    async for key in redis.scan_iter(count=1000):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            value = await redis.get(key) or b""
        elif kind == "hash":
            value = b"\0".join(k + b"\0" + v for k, v in (await redis.hgetall(key)).items())
        elif kind == "list":
            value = b"\0".join(await redis.lrange(key, 0, -1))
        elif kind == "set":
            value = b"\0".join(await redis.smembers(key))
        elif kind == "zset":
            value = b"\0".join(await redis.zrange(key, 0, -1))
        elif kind == "stream":
            value = b"\0".join(k + b"\0" + v for _, fields in await redis.xrange(key) for k, v in fields.items())
        else:
            raise AssertionError(f"unexpected Redis type {kind} of {key!r}")
        out[key] = value
    return out


def leaks(dump: dict[bytes, bytes], needles: dict[str, str]) -> list[str]:
    """Which needles appear (any case, raw or JSON-escaped) in which key's name or content."""
    return [
        f"{what} in {key.decode(errors='replace')}"
        for key, value in dump.items()
        for what, needle in needles.items()
        if any(
            form in key.lower() or form in value.lower()
            for form in {needle.lower().encode(), json.dumps(needle.lower())[1:-1].encode()}
        )
    ]


async def test_no_mail_content_in_redis_after_sync_and_analysis(
    worker: Worker,
    client: Client,
    store: SqlStore,
    dovecot: DovecotServer,
    redis: Redis,
) -> None:
    dovecot.append([_mail(i) for i in range(12)])
    account = await mail_account(store, imap_port=dovecot.port)
    job = await client.enqueue("sync_account", {"tenant_id": "t1", "account_id": account.id})
    assert (await client.wait(job.job_id, timeout=60)).state == "complete"

    async def all_analysed() -> bool:
        page = await store.list_messages("t1", MessageQuery(limit=100))
        return len(page.items) == 12 and all(m.category is not None for m in page.items)

    await eventually(all_analysed, within=60)
    stored = await store.list_messages("t1", MessageQuery())
    message = await store.get_message("t1", stored.items[0].id)
    assert message is not None  # the store does hold every needle (so the scan below looks for real values)
    assert NEEDLES["subject"] in message.parsed.subject and NEEDLES["text body"] in message.parsed.text
    assert NEEDLES["encoded subject (decoded)"] in message.parsed.subject

    dump = await redis_dump(redis)
    assert len(dump) > 10 and b"rt:events" in dump  # jobs ran: records, results, the event stream
    assert leaks(dump, NEEDLES) == []
    planted = {b"probe": json.dumps({"s": message.parsed.subject}).encode()}  # the scan does find a leak
    assert leaks(planted, NEEDLES) == ["subject in probe", "encoded subject (decoded) in probe"]


SEND_NEEDLES = {
    "refused recipient": "refused.emu@zoo-mail.example",
    "busy recipient": "busy.lemur@zoo-mail.example",
    "delivered recipient": "fine.koala@zoo-mail.example",
    "sender": "alice@example.com",
    "subject": "Send-Gecko-4711",
    "text": "Send-Body-Dingo-3141",
}


async def test_no_mail_content_in_redis_after_sends_that_bounce_retry_and_fail(
    client: Client, store: SqlStore, redis: Redis, redis_url: str
) -> None:
    """Send failures (the server's replies echo addresses) keep their full text in the store's outbox item;
    what Redis holds (job errors, tracebacks, dead letters, events, results) has the addresses redacted."""
    from tests.support import job_registry, job_settings
    from tests.support.smtp import SmtpServer
    from worker.jobs.send_email import enqueue_send
    from worker.store import OutboxIn

    smtp = SmtpServer().start()
    try:
        smtp.handler.rcpt_replies[SEND_NEEDLES["refused recipient"]] = (
            f"550 5.1.1 <{SEND_NEEDLES['refused recipient']}>: Recipient address rejected"
        )
        smtp.handler.rcpt_replies[SEND_NEEDLES["busy recipient"]] = (
            f"450 4.2.1 <{SEND_NEEDLES['busy recipient']}>: mailbox busy, try later"
        )
        account = await mail_account(store, smtp_port=smtp.port)
        async with Worker(redis_url, queues=["send-email"], settings=job_settings(), registry=job_registry()):
            jobs = []
            for rcpt in ("refused recipient", "busy recipient", "delivered recipient"):
                data = OutboxIn(
                    account_id=account.id,
                    sender=SEND_NEEDLES["sender"],
                    to=[SEND_NEEDLES[rcpt]],
                    subject=SEND_NEEDLES["subject"],
                    text=SEND_NEEDLES["text"],
                )
                item = await store.create_outbox("t1", data)
                jobs.append((item.id, (await enqueue_send(client, item)).job_id))
            states = [(await client.wait(job_id, timeout=60)).state for _, job_id in jobs]
        assert states == ["dead", "dead", "complete"]
    finally:
        smtp.stop()
    refused = await store.get_outbox("t1", jobs[0][0])
    assert refused is not None and SEND_NEEDLES["refused recipient"] in (refused.last_error or "")  # kept in SQL
    dump = await redis_dump(redis)
    assert leaks(dump, SEND_NEEDLES) == []
