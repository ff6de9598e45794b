"""The dashboard's Quarantine view in a real headless Chromium: see a quarantined message, retry it."""

from __future__ import annotations

import shutil

import pytest
from playwright.async_api import Browser, expect
from redis.asyncio import Redis

from tests.api.conftest import ADMIN, api_settings
from tests.helpers import eventually
from tests.support import job_registry, job_settings
from tests.support.imap import DovecotServer
from tests.test_cli_quarantine import quarantined_big
from tests.test_dashboard import browser  # noqa: F401  (the browser fixture)
from worker.api import create_app
from worker.api.server import serve
from worker.runtime import Worker
from worker.store import open_store

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")


async def test_dashboard_shows_and_retries_a_quarantined_message(
    browser: Browser,  # noqa: F811
    redis: Redis,
    redis_url: str,
    database_url: str,
    dovecot: DovecotServer,
) -> None:
    settings = api_settings()
    account, q = await quarantined_big(dovecot)
    store = open_store(settings)
    try:
        async with serve(create_app(settings, redis_url=redis_url)) as url:
            page = await browser.new_page()
            await page.goto(f"{url}/dashboard#token={ADMIN}")
            await page.locator("#quarantine-link").click()
            row = page.locator(f'[data-testid="quarantined"] tr[data-quarantine="{q.id}"]')
            for tenant in ("t1", "t2", "t1"):  # another tenant sees nothing of t1's
                await page.get_by_test_id("quarantine-tenant").fill(tenant)
                await page.locator("#quarantine-form button").click()
                await expect(row).to_have_count(1 if tenant == "t1" else 0)
                await expect(page.locator("#quarantine-empty")).to_be_visible(visible=tenant != "t1")
            await expect(row).to_contain_text("too large")
            await expect(row).to_contain_text(account.id)
            async with Worker(redis_url, queues=["email-sync"], settings=job_settings(), registry=job_registry()):
                await row.locator('[data-action="retry"]').click()

                async def resolved() -> bool:
                    return await store.list_quarantined("t1", account.id) == []

                await eventually(resolved, within=60)
            await page.locator("#quarantine-form button").click()
            await expect(row).to_have_count(0)
            await expect(page.locator("#quarantine-empty")).to_be_visible()
        [done] = await store.list_quarantined("t1", account.id, include_resolved=True)
    finally:
        await store.aclose()
    assert done.resolved
