"""`GET /v1/tenants/{t}/messages` on both backends: filters, search, cursor pages, 422s, and two tenants that
never see each other's mail (tokens, filters, cursors)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from settings import Settings, get_settings
from tests.store.test_listing import T0, mail, store_mails
from worker.store import SqlStore, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This module runs on both backends whatever TEST_DATABASE says."""
    url: str = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


@pytest.fixture
async def store(settings: Settings, database_url: str) -> AsyncIterator[SqlStore]:
    s = open_store(settings.model_copy(update={"database_url": database_url}))
    yield s
    await s.aclose()


async def seed(store: SqlStore, tenant: str) -> tuple[str, list[str]]:
    from tests.store.test_contract import account_in

    acc = await store.create_account(tenant, account_in())
    ids = await store_mails(
        store,
        tenant,
        acc.id,
        "INBOX",
        [mail(1, subject="Invoice March"), mail(2, subject="Team lunch"), mail(3, subject="Invoice April")],
    )
    first = await store.get_message(tenant, ids[0])
    assert first is not None
    await store.put_analysis(tenant, first.content_id, {"category": "billing", "needs_reply": True})
    return acc.id, ids


async def listed(client: httpx.AsyncClient, tenant: str, **params: object) -> list[str]:
    r = await client.get(f"/v1/tenants/{tenant}/messages", params=params)
    assert r.status_code == 200, r.text
    return [m["id"] for m in r.json()["items"]]


async def test_list_filter_search_and_pages(acme: httpx.AsyncClient, store: SqlStore) -> None:
    account, (march, lunch, april) = await seed(store, "acme")
    assert await listed(acme, "acme") == [april, lunch, march]
    assert await listed(acme, "acme", account_id=account, mailbox="INBOX") == [april, lunch, march]
    assert await listed(acme, "acme", mailbox="Sent") == []
    assert await listed(acme, "acme", q="invoice") == [april, march]
    assert await listed(acme, "acme", category="billing") == [march]
    assert await listed(acme, "acme", needs_reply="true") == [march]
    since = (T0.replace(hour=T0.hour + 2)).isoformat()
    assert await listed(acme, "acme", since=since) == [april, lunch]

    r = await acme.get("/v1/tenants/acme/messages", params={"limit": 2})
    page = r.json()
    assert [m["id"] for m in page["items"]] == [april, lunch] and page["next_cursor"]
    row = page["items"][0]
    assert row["subject"] == "Invoice April" and row["sender"] == "sender3@example.com" and "text" not in row
    r = await acme.get("/v1/tenants/acme/messages", params={"limit": 2, "cursor": page["next_cursor"]})
    assert [m["id"] for m in r.json()["items"]] == [march] and r.json()["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit"),
        ({"since": "2026-01-01T00:00:00"}, "since"),  # no timezone
        ({"needs_reply": "maybe"}, "needs_reply"),
        ({"account_id": "../x"}, "account_id"),
        ({"q": "x" * 501}, "q"),
    ],
)
async def test_bad_input_is_422_and_not_echoed(acme: httpx.AsyncClient, params: dict[str, object], field: str) -> None:
    r = await acme.get("/v1/tenants/acme/messages", params=params)
    assert r.status_code == 422 and field in r.json()["message"]
    assert "not-a-cursor" not in r.text and "x" * 50 not in r.text


async def test_tenants_never_see_each_others_messages(
    acme: httpx.AsyncClient, globex: httpx.AsyncClient, anon: httpx.AsyncClient, store: SqlStore
) -> None:
    acme_account, acme_ids = await seed(store, "acme")
    globex_account, globex_ids = await seed(store, "globex")
    assert await listed(acme, "acme") == list(reversed(acme_ids))
    assert await listed(globex, "globex") == list(reversed(globex_ids))
    # the same words, the other tenant's account, a cursor built on the other tenant's page: nothing of theirs
    assert set(await listed(acme, "acme", q="invoice")) <= set(acme_ids)
    assert globex_account != acme_account
    assert await listed(acme, "acme", account_id=globex_account) == []
    other_page = (await globex.get("/v1/tenants/globex/messages", params={"limit": 1})).json()
    via_cursor = await listed(acme, "acme", cursor=other_page["next_cursor"])
    assert not set(via_cursor) & set(globex_ids)
    # a tenant token cannot name another tenant; no token at all is refused
    assert (await acme.get("/v1/tenants/globex/messages")).status_code == 403
    assert (await anon.get("/v1/tenants/acme/messages")).status_code == 401
