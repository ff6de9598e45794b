"""`worker messages TENANT ...` against the real store: filters, search, pages, tenant scoping, bad input."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.store.test_contract import account_in
from tests.store.test_listing import mail, store_mails
from tests.support import job_settings
from tests.test_cli import run
from worker.store import open_store


async def _seed() -> dict[str, list[str]]:
    store = open_store(job_settings())  # the test's DATABASE_URL
    try:
        out = {}
        for tenant in ("t1", "t2"):
            acc = await store.create_account(tenant, account_in())
            subjects = ["Invoice March", "Team lunch", f"Invoice for {tenant}"]
            out[tenant] = await store_mails(
                store, tenant, acc.id, "INBOX", [mail(i, subject=s) for i, s in enumerate(subjects, 1)]
            )
        first = await store.get_message("t1", out["t1"][0])
        assert first is not None
        await store.put_analysis("t1", first.content_id, {"category": "billing", "needs_reply": True})
        return out
    finally:
        await store.aclose()


def test_messages_list_search_pages(capsys: pytest.CaptureFixture[str], database_url: str) -> None:
    ids = asyncio.run(_seed())
    march, lunch, own = ids["t1"]
    code, out, _ = run(capsys, "messages", "t1", "--json")
    assert code == 0 and [m["id"] for m in json.loads(out)["items"]] == [own, lunch, march]
    code, out, _ = run(capsys, "messages", "t1", "--q", "invoice", "--json")
    assert code == 0 and [m["id"] for m in json.loads(out)["items"]] == [own, march]
    code, out, _ = run(capsys, "messages", "t1", "--needs-reply", "--category", "billing", "--json")
    assert code == 0 and [m["id"] for m in json.loads(out)["items"]] == [march]
    code, out, _ = run(capsys, "messages", "t1", "--since", "2026-03-01T14:00", "--json")
    assert code == 0 and [m["id"] for m in json.loads(out)["items"]] == [own, lunch]

    code, out, _ = run(capsys, "messages", "t1", "--limit", "2")
    assert code == 0 and "Invoice for t1" in out and "Team lunch" in out and "Invoice March" not in out
    cursor = out.strip().splitlines()[-1].removeprefix("more: --cursor ")
    code, out, _ = run(capsys, "messages", "t1", "--limit", "2", "--cursor", cursor, "--json")
    assert code == 0 and json.loads(out) == {"items": json.loads(out)["items"], "next_cursor": None}
    assert [m["id"] for m in json.loads(out)["items"]] == [march]
    code, out, _ = run(capsys, "messages", "t1", "--limit", "1", "--all", "--json")
    assert code == 0 and [m["id"] for m in json.loads(out)["items"]] == [own, lunch, march]
    # the other tenant's words are not found from t1, and t2 sees only its own
    code, out, _ = run(capsys, "messages", "t1", "--q", "t2")
    assert code == 0 and out.strip() == "messages of t1: none"
    code, out, _ = run(capsys, "messages", "t2", "--json")
    assert code == 0 and {m["id"] for m in json.loads(out)["items"]} == set(ids["t2"])


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--cursor", "bogus"], 2, "error: cursor: Value error, invalid cursor"),
        (["--limit", "0"], 2, "error: limit: Input should be greater than or equal to 1"),
        (["--since", "yesterday"], 2, "not an ISO date/time"),
        (["--account", "a:b"], 2, "error: account_id: Value error, invalid account id"),
    ],
)
def test_messages_bad_input(
    capsys: pytest.CaptureFixture[str], database_url: str, argv: list[str], code: int, message: str
) -> None:
    got, _, err = run(capsys, "messages", "t1", *argv)
    assert got == code and message in err and "Traceback" not in err


def test_messages_bad_tenant_and_unreachable_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "messages", "no/such")
    assert code == 1 and "invalid tenant id" in err
    monkeypatch.setenv("DATABASE_URL", "postgresql://worker@127.0.0.1:1/none")
    from settings import get_settings

    get_settings.cache_clear()
    try:
        code, _, err = run(capsys, "messages", "t1")
    finally:
        get_settings.cache_clear()
    assert code == 1 and err.startswith("error: cannot reach the database") and "Traceback" not in err
