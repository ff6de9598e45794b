"""Watch routes over HTTP with a real watch service and Dovecot: a tenant sees its own watched mailboxes only;
the admin sees the fleet; accounts created and disabled through the API start and stop their watch at once;
Prometheus shows the watch gauges."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from settings import Settings
from tests.api.test_mail_api import account_body
from tests.helpers import eventually
from tests.support.imap import PASSWORD, DovecotServer
from worker.watch import keys
from worker.watch.service import WatchService


@pytest.fixture
async def watching(redis_url: str, settings: Settings) -> AsyncIterator[WatchService]:
    fast = {"watch_lease_ms": 1500, "watch_scan_s": 0.2, "watch_reconcile_s": 600.0}  # only notifications act
    service = WatchService(redis_url, settings.model_copy(update=fast))
    await service.start()
    yield service
    await service.stop()


async def _connected(client: httpx.AsyncClient, tenant: str, n: int) -> bool:
    r = await client.get(f"/v1/tenants/{tenant}/watches")
    return r.status_code == 200 and sum(w["state"] == "connected" for w in r.json()) == n


async def test_tenant_sees_only_its_watches_and_admin_sees_the_fleet(
    acme: httpx.AsyncClient,
    globex: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    dovecot: DovecotServer,
    watching: WatchService,
) -> None:
    r = await acme.post("/v1/tenants/acme/accounts", json=account_body(imap_port=dovecot.port, secret=PASSWORD))
    assert r.status_code == 201
    account = r.json()
    await eventually(lambda: _connected(acme, "acme", 1), within=15)
    [w] = (await acme.get("/v1/tenants/acme/watches")).json()
    assert (w["account_id"], w["mailbox"], w["mode"]) == (account["id"], "INBOX", "idle")
    assert w["owner"] == watching.owner and w["connected_since"] and w["last_error"] is None
    assert PASSWORD not in str(w)

    assert (await globex.get("/v1/tenants/globex/watches")).json() == []
    assert (await globex.get("/v1/tenants/acme/watches")).status_code in (403, 404)
    assert (await globex.get("/v1/watches")).status_code == 403
    fleet = (await admin.get("/v1/watches")).json()
    assert fleet["summary"]["processes"] == 1 and len(fleet["watches"]) == 1

    async def gauges() -> bool:
        text = (await admin.get("/metrics")).text
        return 'worker_watches{state="connected"} 1.0' in text and "worker_watch_processes 1.0" in text

    await eventually(gauges, within=5)

    r = await acme.patch(f"/v1/tenants/acme/accounts/{account['id']}", json={"active": False})
    assert r.status_code == 200

    async def gone() -> bool:
        return (await acme.get("/v1/tenants/acme/watches")).json() == []

    await eventually(gone, within=10)


async def test_watches_need_a_token(anon: httpx.AsyncClient) -> None:
    assert (await anon.get("/v1/watches")).status_code == 401
    assert (await anon.get("/v1/tenants/acme/watches")).status_code == 401


async def test_a_watch_record_with_unusable_times_is_listed_without_them(
    admin: httpx.AsyncClient, redis: Redis
) -> None:
    """State records live in Redis, where anything may have written them: times that are not usable epoch seconds
    (far out of range, NaN, text) read as missing instead of failing the listing."""
    name = keys.state("acme:a1:x")
    fields = {"tenant": "acme", "account": "a1", "mailbox": "INBOX", "state": "connected"}
    await redis.hset(name, mapping=fields | {"connected_since": "1e300", "last_event": "nan", "updated_at": "soon"})
    await redis.sadd(keys.ALL, name)
    r = await admin.get("/v1/watches")
    assert r.status_code == 200, r.text
    [w] = [w for w in r.json()["watches"] if (w["tenant_id"], w["account_id"]) == ("acme", "a1")]
    assert (w["connected_since"], w["last_event"], w["updated_at"]) == (None, None, None)
