"""The dashboard's watch panel in a real headless Chromium: a watched Dovecot mailbox shows as connected,
a refused password as auth_error (no secret shown), then another view hides the panel."""

from __future__ import annotations

import shutil

import pytest
from playwright.async_api import Browser, expect
from redis.asyncio import Redis

from tests.api.conftest import ADMIN, api_settings
from tests.support import mail_account
from tests.support.imap import DovecotServer, dovecot_available
from tests.test_dashboard import browser  # noqa: F401  (the browser fixture)
from worker.api import create_app
from worker.api.server import serve
from worker.store import open_store
from worker.watch.service import WatchService

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None or not dovecot_available(), reason="chromium or dovecot is not installed"
)


async def test_dashboard_shows_watched_mailboxes(
    browser: Browser,  # noqa: F811
    redis: Redis,
    redis_url: str,
    database_url: str,
) -> None:
    settings = api_settings()
    store = open_store(settings)
    with DovecotServer().start() as dovecot:
        good = await mail_account(store, imap_port=dovecot.port)
        bad = await mail_account(store, imap_port=dovecot.port, password="not-the-password")
        service = WatchService(redis_url, settings.model_copy(update={"watch_scan_s": 0.2}), store=store)
        await service.start()
        try:
            async with serve(create_app(settings, redis_url=redis_url)) as url:
                page = await browser.new_page()
                await page.goto(f"{url}/dashboard#token={ADMIN}")
                await page.locator("#watches-link").click()
                rows = page.locator('[data-testid="watches"] tr')
                await expect(rows).to_have_count(2)
                good_row = page.locator(f'[data-testid="watches"] tr[data-account="{good.id}"]')
                bad_row = page.locator(f'[data-testid="watches"] tr[data-account="{bad.id}"]')
                await expect(good_row.locator('[data-field="state"]')).to_have_text("connected")
                await expect(bad_row.locator('[data-field="state"]')).to_have_text("auth_error")
                await expect(page.locator("#watches-count")).to_have_text("1/2")
                await expect(page.locator('[data-testid="watches-summary"]')).to_contain_text("1 connected")
                assert "not-the-password" not in await page.content()
                await page.locator("#dlq-link").click()
                await expect(page.locator("#watches-view")).to_be_hidden()
        finally:
            await service.stop()
            await store.aclose()
