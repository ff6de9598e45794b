"""The dashboard's ambiguous-send panel in a real headless Chromium: see the item, decide it."""

from __future__ import annotations

import shutil

import pytest
from playwright.async_api import Browser, expect
from redis.asyncio import Redis

from tests.api.conftest import ADMIN, api_settings
from tests.test_cli_outbox import _ambiguous
from tests.test_dashboard import browser  # noqa: F401  (the browser fixture)
from worker.api import create_app
from worker.api.server import serve
from worker.store import OutboxStatus, RedisStore

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")


async def test_dashboard_decides_an_ambiguous_send(
    browser: Browser,  # noqa: F811
    redis: Redis,
    redis_url: str,
) -> None:
    settings = api_settings()
    item = await _ambiguous(redis_url)
    async with serve(create_app(settings, redis_url=redis_url)) as url:
        page = await browser.new_page()
        page.on("dialog", lambda d: d.accept())
        await page.goto(f"{url}/dashboard#token={ADMIN}")
        await expect(page.locator("#outbox-count")).to_have_text("1")
        await page.locator("#outbox-link").click()
        row = page.locator(f'[data-testid="outbox"] tr[data-outbox="{item.id}"]')
        await expect(row).to_contain_text("no reply after end of DATA")
        await row.locator('[data-action="mark_sent"]').click()
        await expect(row).to_have_count(0)
        await expect(page.locator("#outbox-empty")).to_be_visible()
        await expect(page.locator("#outbox-count")).to_have_text("0")
    done = await RedisStore(redis, settings.secret_key).get_outbox("t1", item.id)
    assert done is not None and done.status is OutboxStatus.SENT and done.resolution == "operator"
