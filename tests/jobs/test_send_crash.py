"""A real worker process SIGKILLed at each step of a send, against aiosmtpd and Dovecot: 0 double sends,
0 items left `sending`, and only the truly ambiguous step (end of DATA written, no reply) needs resolving,
which the Sent-folder lookup settles.

The SMTP sink files every message it accepts into the Dovecot mailbox's Sent folder (SPECIAL-USE \\Sent),
as Gmail does; a fault proxy between worker and sink fires the SIGKILL at an exact point of the conversation.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import eventually
from tests.jobs.test_send_email import message_ids, outbox
from tests.support import job_registry, job_settings, mail_account, spawn_worker
from tests.support.faultproxy import POINTS, Point, SmtpFaultProxy
from tests.support.imap import DovecotServer, append_messages, dovecot_available
from tests.support.smtp import Received, SmtpServer
from worker.jobs.send_email import enqueue_send
from worker.runtime import Client, Worker
from worker.store import OutboxItem, OutboxStatus, RedisStore

GRACE_S = 0.5
BIG_TEXT = "x" * 76 + "\n"  # 6 MB of it: more than the socket buffers, so mid-DATA is still mid-DATA when killed


@pytest.fixture
def mailbox() -> Iterator[DovecotServer]:
    if not dovecot_available():
        pytest.skip("dovecot-imapd is not installed")
    with DovecotServer(special_use={"Sent": "\\Sent"}).start() as server:
        server.command('CREATE "Sent"')
        yield server  # type: ignore[misc]


def file_into_sent(server: DovecotServer) -> Callable[[Received], None]:
    """What Gmail does: every message accepted over SMTP appears in the sender's Sent folder."""

    def on_data(received: Received) -> None:
        append_messages(server.port, [received.content], mailbox="Sent", flags="\\Seen")

    return on_data


def kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


async def final(store: RedisStore, item: OutboxItem, within: float = 40) -> OutboxItem:
    async def settled() -> bool:
        current = await store.get_outbox(item.tenant_id, item.id)
        return (
            current is not None
            and current.status in (OutboxStatus.SENT, OutboxStatus.AMBIGUOUS)
            and (current.status is OutboxStatus.SENT or "needs a decision" in (current.last_error or ""))
        )

    await eventually(settled, within=within, every=0.1)
    done = await store.get_outbox(item.tenant_id, item.id)
    assert done is not None
    return done


@pytest.mark.parametrize("point", POINTS)
async def test_sigkill_at_each_step(
    point: Point, redis_url: str, client: Client, store: RedisStore, smtp: SmtpServer, mailbox: DovecotServer
) -> None:
    smtp.handler.on_data = file_into_sent(mailbox)
    settings = job_settings().model_copy(update={"send_ambiguous_grace_s": GRACE_S})
    proc = spawn_worker(redis_url, ["send-email"], {"SEND_AMBIGUOUS_GRACE_S": str(GRACE_S)})
    proxy = SmtpFaultProxy(smtp.port, point, lambda: kill(proc), skip=1).start()
    try:
        account = await mail_account(store, smtp_port=proxy.port, imap_port=mailbox.port)
        earlier = await outbox(store, account, subject="an earlier message")  # relayed untouched
        assert (await client.wait((await enqueue_send(client, earlier)).job_id, timeout=30)).state == "complete"
        text = BIG_TEXT * 80_000 if point == "mid_data" else "Hi there"
        item = await outbox(store, account, text=text)
        await enqueue_send(client, item)
        await eventually(lambda: _exited(proc), within=60)
        assert proxy.fired.is_set()
        died = await store.get_outbox("t1", item.id)
        assert (died is not None and died.status is OutboxStatus.SENDING) or point == "reply"

        async with Worker(redis_url, queues=["send-email"], settings=settings, registry=job_registry()):
            done = await final(store, item)
    finally:
        proxy.stop()
        kill(proc)
        proc.wait()

    ids = message_ids(smtp.messages)
    assert ids.count(item.message_id) == 1, (point, ids.count(item.message_id), [e.note for e in done.history])
    assert done.status is OutboxStatus.SENT
    went_ambiguous = any(e.status is OutboxStatus.AMBIGUOUS for e in done.history)
    truly_ambiguous = point in ("end_of_data", "end_of_data_lost")
    assert went_ambiguous == truly_ambiguous, [e.note for e in done.history]
    expected = {
        "before_data": ("smtp", 0),
        "mid_data": ("smtp", 0),
        "end_of_data": ("sent_folder", 0),  # delivered: found in Sent by its Message-ID
        "end_of_data_lost": ("smtp", 1),  # not in Sent although the earlier message is: resent once
        "reply": ("smtp", 0),  # the reply was recorded before the kill
    }[point]
    assert (done.resolution, done.auto_resends) == expected, [e.note for e in done.history]


async def test_ambiguous_on_a_server_that_does_not_file_sent_mail_waits_for_a_person(
    redis_url: str, client: Client, store: RedisStore, smtp: SmtpServer, mailbox: DovecotServer
) -> None:
    """Not in Sent proves nothing when the server never files submitted mail there: no guess, no resend."""
    settings = job_settings().model_copy(update={"send_ambiguous_grace_s": GRACE_S})
    proc = spawn_worker(redis_url, ["send-email"], {"SEND_AMBIGUOUS_GRACE_S": str(GRACE_S)})
    proxy = SmtpFaultProxy(smtp.port, "end_of_data", lambda: kill(proc), skip=1).start()
    try:
        account = await mail_account(store, smtp_port=proxy.port, imap_port=mailbox.port)
        earlier = await outbox(store, account, subject="an earlier message")
        assert (await client.wait((await enqueue_send(client, earlier)).job_id, timeout=30)).state == "complete"
        item = await outbox(store, account)
        await enqueue_send(client, item)
        await eventually(lambda: _exited(proc), within=60)
        async with Worker(redis_url, queues=["send-email"], settings=settings, registry=job_registry()):
            done = await final(store, item)
    finally:
        proxy.stop()
        kill(proc)
        proc.wait()
    assert done.status is OutboxStatus.AMBIGUOUS and done.needs_decision
    assert "not known to file sent mail" in (done.last_error or "")
    assert message_ids(smtp.messages).count(item.message_id) == 1  # delivered once; never resent on a guess


async def _exited(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is not None
