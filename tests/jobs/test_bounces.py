"""Bounces arriving in a synced Dovecot mailbox are matched to their outbox item (real samples, real worker)."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from tests.jobs.test_email_sync import report, sync
from tests.jobs.test_send_email import outbox
from tests.support import mail_account
from tests.support.imap import DovecotServer, make_mail
from tests.support.smtp import SmtpServer
from worker.jobs.send_email import enqueue_send
from worker.runtime import Client, Events, Worker
from worker.store import OutboxItem, OutboxStatus, SqlStore

WORKER_QUEUES = ["email-sync", "send-email"]
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "bounces" / "flufl"


def bounce_for(sample: str, original_id: str, item: OutboxItem) -> bytes:
    """A real bounce sample, reporting on `item` instead of the message it once reported on."""
    raw = (SAMPLES / sample).read_bytes()
    assert original_id.encode() in raw
    return raw.replace(original_id.encode(), item.message_id.encode())


async def sent(client: Client, store: SqlStore, item: OutboxItem) -> OutboxItem:
    assert (await client.wait((await enqueue_send(client, item)).job_id, timeout=30)).state == "complete"
    done = await store.get_outbox(item.tenant_id, item.id)
    assert done is not None and done.status is OutboxStatus.SENT
    return done


async def test_bounces_in_the_inbox_reach_their_outbox_items(
    worker: Worker, client: Client, store: SqlStore, smtp: SmtpServer, dovecot: DovecotServer, redis: Redis
) -> None:
    account = await mail_account(store, smtp_port=smtp.port, imap_port=dovecot.port)
    single = await sent(client, store, await outbox(store, account, to=["joem@example.com"], cc=[], bcc=[]))
    pair = await sent(client, store, await outbox(store, account, to=["userx@its.example.nl", "ok@example.com"]))
    dovecot.append(
        [
            make_mail(1),
            bounce_for("dsn_11.txt", "<mailman.0.1035637201.19036.mailman-developers@python.org>", single),  # RFC 3464
            bounce_for("exim_01.txt", "<19990920022322.A19735@stereo.rotzorg.org>", pair),  # Exim plain text
            (SAMPLES / "postfix_02.txt").read_bytes(),  # a bounce about a message we never sent
        ]
    )
    assert report(await sync(client, account)).fetched == 4

    bounced = await store.get_outbox("t1", single.id)
    assert bounced is not None and bounced.status is OutboxStatus.BOUNCED and bounced.resolution == "bounce"
    joe = bounced.recipients["joem@example.com"]
    assert (joe.state, joe.status) == ("bounced", "5.1.1")
    partly = await store.get_outbox("t1", pair.id)
    assert partly is not None and partly.status is OutboxStatus.SENT  # one of two recipients bounced
    userx = partly.recipients["userx@its.example.nl"]
    assert (userx.state, userx.status, userx.code) == ("bounced", "5.1.1", 553)
    assert "unknown or illegal user" in (userx.diagnostic or "")
    assert partly.recipients["ok@example.com"].state == "accepted"

    def bounce_events(entries: list[tuple[str, dict[str, str]]]) -> list[tuple[str, str]]:
        return [(f["outbox_id"], f["status"]) for _, f in entries if f.get("note", "").startswith("bounce report")]

    events = await Events(redis).read(count=10_000)
    assert sorted(bounce_events(events)) == sorted([(single.id, "bounced"), (pair.id, "sent")])
    # the same bounce synced again (a copy in another folder, a resync) changes nothing
    dovecot.append([bounce_for("exim_01.txt", "<19990920022322.A19735@stereo.rotzorg.org>", pair)])
    assert report(await sync(client, account)).fetched == 1
    assert len(bounce_events(await Events(redis).read(count=10_000))) == 2
