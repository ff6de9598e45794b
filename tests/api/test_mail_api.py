"""Mail routes against real servers: accounts (secrets write-only), send, schedule/cancel/reschedule,
sync of a pymap mailbox and analysis, each through the HTTP API with real workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from redis.asyncio import Redis

from settings import Settings
from tests.api.test_jobs_api import wait_state
from tests.helpers import eventually
from tests.support import job_registry
from tests.support.imap import PASSWORD, USER, PymapServer, make_mail
from tests.support.smtp import SmtpServer
from worker.runtime import Worker

SECRET = "s3cr3t-app-password"


def account_body(smtp_port: int = 1, imap_port: int = 1, **over: object) -> dict[str, object]:
    return {
        "email": f"{USER}@example.com",
        "username": USER,
        "secret": SECRET,
        "imap_host": "127.0.0.1",
        "imap_port": imap_port,
        "imap_tls": "plain",
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_port,
        "smtp_tls": "plain",
        "timeout_s": 10,
    } | over


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
async def mail_worker(redis_url: str, settings: Settings) -> AsyncIterator[Worker]:
    queues = ["email-sync", "send-email", "scheduled-emails", "ai-analysis"]
    async with Worker(redis_url, queues=queues, settings=settings, registry=job_registry()) as w:
        yield w


async def test_accounts_keep_secrets_write_only(
    acme: httpx.AsyncClient, globex: httpx.AsyncClient, redis: Redis
) -> None:
    r = await acme.post("/v1/tenants/acme/accounts", json=account_body())
    assert r.status_code == 201 and r.json()["has_secret"] is True
    account = r.json()
    assert SECRET not in r.text and "secret" not in account
    listed = await acme.get("/v1/tenants/acme/accounts")
    assert [a["id"] for a in listed.json()] == [account["id"]] and SECRET not in listed.text
    raw = b"".join([await redis.get(k) or b"" for k in await redis.keys("store:acme:account:*")])
    assert SECRET.encode() not in raw  # encrypted at rest

    bad = await acme.post("/v1/tenants/acme/accounts", json=account_body(email="not-an-address", imap_port="x"))
    assert bad.status_code == 422 and SECRET not in bad.text
    assert "email: Value error, invalid address 'not-an-address'" in bad.json()["message"]
    assert "imap_port: Input should be a valid integer" in bad.json()["message"]
    assert (await globex.get(f"/v1/tenants/acme/accounts/{account['id']}")).status_code == 403
    assert (await globex.get(f"/v1/tenants/globex/accounts/{account['id']}")).status_code == 404

    r = await acme.patch(f"/v1/tenants/acme/accounts/{account['id']}", json={"active": False})
    assert r.status_code == 200 and r.json()["active"] is False
    assert (await acme.delete(f"/v1/tenants/acme/accounts/{account['id']}")).status_code == 204
    assert (await acme.get(f"/v1/tenants/acme/accounts/{account['id']}")).status_code == 404


async def test_send_now_schedule_cancel_reschedule_and_bounce(
    acme: httpx.AsyncClient, smtp: SmtpServer, mail_worker: Worker, redis: Redis
) -> None:
    account = (
        await acme.post("/v1/tenants/acme/accounts", json=account_body(smtp_port=smtp.port, secret=PASSWORD))
    ).json()
    mail = {
        "account_id": account["id"],
        "sender": f"{USER}@example.com",
        "to": ["bob@example.com"],
        "subject": "Hello",
        "text": "Hi Bob",
    }
    no_rcpt = await acme.post("/v1/tenants/acme/outbox", json=mail | {"to": []})
    assert no_rcpt.status_code == 422 and no_rcpt.json()["message"] == "to: at least one recipient is needed"
    bad = await acme.post("/v1/tenants/acme/outbox", json=mail | {"to": ["bob@example.com\r\nBcc: x@evil.com"]})
    assert bad.status_code == 422 and "control characters are not allowed" in bad.json()["message"]
    assert (await acme.post("/v1/tenants/acme/outbox", json=mail | {"account_id": "nope"})).status_code == 404
    assert await redis.keys("store:acme:outbox:*") == []  # refused requests store nothing

    first = await acme.post("/v1/tenants/acme/outbox", json=mail, headers={"Idempotency-Key": "send-1"})
    again = await acme.post("/v1/tenants/acme/outbox", json=mail, headers={"Idempotency-Key": "send-1"})
    assert first.status_code == 202 and again.json() == first.json()
    job = await wait_state(acme, first.json()["job"]["job_id"], "complete")
    assert job["result"]["status"] == "sent" and len(smtp.messages) == 1
    outbox = (await acme.get(f"/v1/tenants/acme/outbox/{first.json()['outbox_id']}")).json()
    assert outbox["status"] == "sent" and outbox["message_id"] == first.json()["message_id"]

    later = (await acme.post("/v1/tenants/acme/outbox", json=mail | {"delay": 600})).json()
    assert later["job"]["state"] == "deferred" and later["scheduled_at"] is not None
    moved = await acme.post(f"/v1/tenants/acme/outbox/{later['outbox_id']}/reschedule", json={"delay": 0.2})
    assert moved.status_code == 200
    await wait_state(acme, later["job"]["job_id"], "complete")
    await eventually(lambda: _count(smtp, 2))

    cancel_me = (await acme.post("/v1/tenants/acme/outbox", json=mail | {"delay": 300 * 86400})).json()
    r = await acme.post(f"/v1/tenants/acme/outbox/{cancel_me['outbox_id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert (await acme.get(f"/v1/jobs/{cancel_me['job']['job_id']}")).json()["state"] == "cancelled"
    r = await acme.post(f"/v1/tenants/acme/outbox/{cancel_me['outbox_id']}/reschedule", json={"delay": 1})
    assert r.status_code == 409
    r = await acme.post(f"/v1/tenants/acme/outbox/{first.json()['outbox_id']}/cancel")
    assert r.status_code == 409 and r.json()["message"] == "too late to cancel: the message is sent"

    smtp.handler.rcpt_replies["nobody@example.com"] = "550 5.1.1 no such user"
    bounce = (await acme.post("/v1/tenants/acme/outbox", json=mail | {"to": ["nobody@example.com"]})).json()
    dead = await wait_state(acme, bounce["job"]["job_id"], "dead")
    assert "550" in dead["error"] and len(smtp.messages) == 2


async def test_sync_then_analysis(acme: httpx.AsyncClient, mail_worker: Worker) -> None:
    with PymapServer().start() as imap:
        imap.append([make_mail(1, subject="Invoice 42 is due"), make_mail(2, subject="Lunch on Friday?")])
        r = await acme.post("/v1/tenants/acme/accounts", json=account_body(imap_port=imap.port, secret=PASSWORD))
        account = r.json()
        r = await acme.post(f"/v1/tenants/acme/accounts/{account['id']}/sync", headers={"Idempotency-Key": "s1"})
        assert r.status_code == 202
        (job,) = r.json()["jobs"]
        discovery = await wait_state(acme, job["job_id"], "complete", timeout=20)
        assert discovery["result"]["mailboxes"] == ["INBOX"]  # pymap has no Sent or Archive folder
        (sync_job,) = discovery["result"]["jobs"]
        done = await wait_state(acme, sync_job, "complete", timeout=20)
        assert done["result"]["new"] == 2 and done["result"]["analyses_requested"] == 2
    assert (await acme.post("/v1/tenants/acme/accounts/nope/sync")).status_code == 404

    messages = []
    async with asyncio.timeout(20):
        while len(messages) < 2:  # the sync enqueued one analysis per new message
            messages = [m for m in await _messages(acme) if m["analysis"] is not None]
            await asyncio.sleep(0.1)
    assert sorted(m["subject"] for m in messages) == ["Invoice 42 is due", "Lunch on Friday?"]
    msg_id = messages[0]["id"]
    again = await acme.post(f"/v1/tenants/acme/messages/{msg_id}/analysis")
    assert again.status_code == 202
    result = (await wait_state(acme, again.json()["job_id"], "complete"))["result"]
    assert result["stored"] is False  # analysed once per content
    analysis = (await acme.get(f"/v1/tenants/acme/messages/{msg_id}/analysis")).json()
    assert analysis["analyzer"] == "heuristic" and analysis["category"]
    assert (await acme.post("/v1/tenants/acme/messages/nope/analysis")).status_code == 404


async def _count(smtp: SmtpServer, n: int) -> bool:
    return len(smtp.messages) >= n


async def _messages(c: httpx.AsyncClient) -> list[dict[str, object]]:
    """The tenant's synced messages, found through the analysis jobs the sync enqueued."""
    jobs = (await c.get("/v1/tenants/acme/jobs")).json()
    ids = {j["payload"]["message_id"] for j in jobs if j["function"] == "analyse_message"}
    return [(await c.get(f"/v1/tenants/acme/messages/{i}")).json() for i in sorted(ids)]


async def test_quarantined_message_listed_and_retried_through_the_api(
    acme: httpx.AsyncClient, globex: httpx.AsyncClient, mail_worker: Worker, redis: Redis, settings: Settings
) -> None:
    from worker.store import open_store

    store = open_store(settings)  # the test's DATABASE_URL
    with PymapServer().start() as imap:
        imap.append([make_mail(1, subject="came back")])
        body = account_body(imap_port=imap.port, secret=PASSWORD)
        account = (await acme.post("/v1/tenants/acme/accounts", json=body)).json()
        # a message an earlier sync could not store (say, the store was failing at the time)
        selected, search = imap.command("SELECT INBOX", "UID SEARCH ALL")
        uidvalidity = int(selected.split(b"[UIDVALIDITY ")[1].split(b"]")[0])
        uid = int(search.split(b"* SEARCH ")[1].split()[0])
        q = await store.quarantine_message(
            "acme", account["id"], "INBOX", uidvalidity, uid, error="store: boom", size=9
        )
        listed = (await acme.get("/v1/tenants/acme/quarantine")).json()
        assert [(i["id"], i["uid"], i["error"]) for i in listed] == [(q.id, uid, "store: boom")]
        assert (await globex.get("/v1/tenants/acme/quarantine")).status_code in (403, 404)  # another tenant
        assert (await acme.post("/v1/tenants/acme/quarantine/qnope/retry")).status_code == 404
        r = await acme.post(f"/v1/tenants/acme/quarantine/{q.id}/retry")
        assert r.status_code == 202
        done = await wait_state(acme, r.json()["job_id"], "complete", timeout=30)
        assert done["result"]["resolved"] is True and done["result"]["outcome"] == "stored"
    assert (await acme.get("/v1/tenants/acme/quarantine")).json() == []
    msg = (await acme.get(f"/v1/tenants/acme/messages/{done['result']['message_id']}")).json()
    assert msg["subject"] == "came back" and msg["uid"] == uid
