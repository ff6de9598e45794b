"""The dashboard's message view in a real headless Chromium: filters, word search, "Load more", mail text
shown as text (never as HTML), and an error line for a refused query."""

from __future__ import annotations

import shutil

import pytest
from playwright.async_api import Browser, expect
from redis.asyncio import Redis

from tests.api.conftest import ADMIN, api_settings
from tests.store.test_contract import account_in
from tests.store.test_listing import mail, store_mails
from tests.test_dashboard import browser  # noqa: F401  (the browser fixture)
from worker.api import create_app
from worker.api.server import serve
from worker.store import open_store

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
HOSTILE = '<img src=x onerror="document.title=1">Invoice'


async def _seed() -> list[str]:
    store = open_store(api_settings())
    try:
        acc = await store.create_account("acme", account_in())
        mails = [mail(i, subject=f"note {i}") for i in range(1, 60)] + [mail(60, subject=HOSTILE)]
        ids = await store_mails(store, "acme", acc.id, "INBOX", mails)
        other = await store.create_account("globex", account_in())
        await store_mails(store, "globex", other.id, "INBOX", [mail(61, subject="globex Invoice")])
        first = await store.get_message("acme", ids[0])
        assert first is not None
        await store.put_analysis("acme", first.content_id, {"category": "billing", "needs_reply": True})
        return ids
    finally:
        await store.aclose()


async def test_dashboard_lists_searches_and_loads_more(
    browser: Browser,  # noqa: F811
    redis: Redis,
    redis_url: str,
    database_url: str,
) -> None:
    ids = await _seed()
    async with serve(create_app(api_settings(), redis_url=redis_url)) as url:
        page = await browser.new_page()
        await page.goto(f"{url}/dashboard#token={ADMIN}")
        await page.locator("#messages-link").click()
        await page.locator("#messages-tenant").fill("acme")
        await page.locator('[data-testid="messages-form"] button[type="submit"]').click()
        rows = page.locator('[data-testid="messages"] tr')
        await expect(rows).to_have_count(50)
        await expect(rows.first).to_have_attribute("data-message", ids[-1])  # newest first
        await expect(rows.first).to_contain_text(HOSTILE)  # the markup is text
        assert await page.title() != "1" and await page.locator('[data-testid="messages"] img').count() == 0
        await page.locator("#messages-more").click()
        await expect(rows).to_have_count(60)
        await expect(page.locator("#messages-more")).to_be_hidden()
        await expect(rows.last).to_have_attribute("data-message", ids[0])

        await page.locator("#messages-q").fill("invoice")
        await page.locator('[data-testid="messages-form"] button[type="submit"]').click()
        await expect(rows).to_have_count(1)  # not the other tenant's "globex Invoice"
        await expect(rows.first).to_have_attribute("data-message", ids[-1])

        await page.locator("#messages-q").fill("")
        await page.locator("#messages-category").fill("billing")
        await page.locator("#messages-reply").select_option("true")
        await page.locator('[data-testid="messages-form"] button[type="submit"]').click()
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-message", ids[0])
        await expect(rows.first).to_contain_text("billing")

        await page.locator("#messages-category").fill("x" * 65)  # over the limit: the API's 422, shown
        await page.locator('[data-testid="messages-form"] button[type="submit"]').click()
        await expect(page.locator("#messages-error")).to_contain_text("category: String should have at most 64")

        await page.locator("#dlq-link").click()  # another view hides this one
        await expect(page.locator("#messages-view")).to_be_hidden()
