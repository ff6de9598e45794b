"""An operator settles ambiguous sends through the HTTP API (real app, real worker, aiosmtpd)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from settings import Settings
from tests.api.conftest import api_settings
from tests.api.test_mail_api import account_body
from tests.helpers import eventually
from tests.jobs.test_send_email import message_ids
from tests.support import job_registry
from tests.support.imap import PASSWORD
from tests.support.smtp import SmtpServer
from worker.runtime import Worker


@pytest.fixture
def settings() -> Settings:
    return api_settings(send_ambiguous_grace_s=0.1)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    server.handler.data_delay = 2.0  # the message is queued, the reply comes after the client gave up
    yield server
    server.stop()


@pytest.fixture
async def send_worker(redis_url: str, settings: Settings) -> AsyncIterator[Worker]:
    async with Worker(redis_url, queues=["send-email"], settings=settings, registry=job_registry()) as w:
        yield w


async def _ambiguous(c: httpx.AsyncClient, account_id: str, subject: str) -> dict[str, object]:
    body = {"account_id": account_id, "sender": "alice@example.com", "to": ["bob@example.com"], "subject": subject}
    r = await c.post("/v1/tenants/acme/outbox", json=body | {"text": "hi"})
    assert r.status_code == 202, r.text
    outbox_id = r.json()["outbox_id"]

    async def waiting() -> bool:
        item = (await c.get(f"/v1/tenants/acme/outbox/{outbox_id}")).json()
        return bool(item["needs_decision"]) and "needs a decision" in (item["last_error"] or "")

    await eventually(waiting, within=30, every=0.1)
    item: dict[str, object] = (await c.get(f"/v1/tenants/acme/outbox/{outbox_id}")).json()
    return item


async def test_operator_decides_ambiguous_sends(
    acme: httpx.AsyncClient, globex: httpx.AsyncClient, admin: httpx.AsyncClient, smtp: SmtpServer, send_worker: Worker
) -> None:
    # IMAP unreachable: the Sent-folder lookup cannot settle it, so a person must
    r = await acme.post(
        "/v1/tenants/acme/accounts", json=account_body(smtp_port=smtp.port, timeout_s=0.5, secret=PASSWORD)
    )
    account_id = r.json()["id"]
    first = await _ambiguous(acme, account_id, "one")
    assert first["status"] == "ambiguous" and first["delivery_step"] == "data_end"
    assert "Sent folder could not be searched" in str(first["last_error"])
    second = await _ambiguous(acme, account_id, "two")

    listed = (await acme.get("/v1/tenants/acme/outbox", params={"status": "ambiguous"})).json()
    assert {i["id"] for i in listed} == {first["id"], second["id"]}
    pending = (await admin.get("/v1/outbox/ambiguous")).json()
    assert {(i["tenant_id"], i["id"]) for i in pending} == {("acme", first["id"]), ("acme", second["id"])}
    assert (await acme.get("/v1/outbox/ambiguous")).status_code == 403  # admin only
    other = await globex.post(f"/v1/tenants/acme/outbox/{first['id']}/resolve", json={"action": "fail"})
    assert other.status_code == 403

    done = await acme.post(
        f"/v1/tenants/acme/outbox/{first['id']}/resolve", json={"action": "mark_sent", "note": "bob replied"}
    )
    assert done.status_code == 200, done.text
    out = done.json()
    assert out["status"] == "sent" and out["resolution"] == "operator" and not out["needs_decision"]
    assert out["history"][-1]["note"] == "operator: mark_sent (bob replied)"
    again = await acme.post(f"/v1/tenants/acme/outbox/{first['id']}/resolve", json={"action": "fail"})
    assert again.status_code == 409 and "is sent" in again.json()["message"]
    bad = await acme.post(f"/v1/tenants/acme/outbox/{first['id']}/resolve", json={"action": "explode"})
    assert bad.status_code == 422

    # the operator knows the second never arrived: resend it (the server answers in time now)
    smtp.handler.data_delay = 0.0
    r = await acme.post(f"/v1/tenants/acme/outbox/{second['id']}/resolve", json={"action": "resend"})
    assert r.status_code == 200 and r.json()["status"] == "queued"

    async def resent() -> bool:
        return bool((await acme.get(f"/v1/tenants/acme/outbox/{second['id']}")).json()["status"] == "sent")

    await eventually(resent, within=20, every=0.1)
    final = (await acme.get(f"/v1/tenants/acme/outbox/{second['id']}")).json()
    assert final["resolution"] == "smtp" and final["auto_resends"] == 0
    assert message_ids(smtp.messages).count(str(second["message_id"])) == 2  # the person chose to resend
    assert (await acme.get("/v1/tenants/acme/outbox", params={"status": "ambiguous"})).json() == []

    async def counted() -> bool:
        text = (await admin.get("/metrics")).text
        return 'worker_outbox_transitions_total{status="ambiguous"}' in text and 'status="sent"}' in text

    await eventually(counted, within=10, every=0.2)
